use std::path::Path;

use super::*;
use crate::config::Volume;

/// Ports handed out in order from 41000, so tests do not probe the machine.
struct Fixed(u16);

impl PortSource for Fixed {
    fn assign(&mut self, _: &str, _: &str) -> Option<u16> {
        self.0 += 1;
        Some(self.0)
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir();
    resolve_toml(&dir, Path::new("locald.toml"), text, &mut Fixed(41000))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn unknown_key_points_at_the_key() {
    let text = "[services.web]\ncommand = \"x\"\nprot = 3\n";
    assert!(error(text).starts_with("locald.toml:3:1: unknown field `prot`"), "{}", error(text));
}

#[test]
fn bad_restart_value_points_at_the_value() {
    let text = "[services.web]\ncommand = \"x\"\nrestart = \"sometimes\"\n";
    let e = error(text);
    assert!(e.starts_with("locald.toml:3:11: unknown variant `sometimes`"), "{e}");
}

#[test]
fn bad_duration_and_signal() {
    let e = error("[services.web]\ncommand = \"x\"\nstop_timeout = \"soon\"\n");
    assert!(e.starts_with("locald.toml:3:16: invalid duration \"soon\""), "{e}");
    let e = error("[services.web]\ncommand = \"x\"\nstop_signal = \"NOPE\"\n");
    assert!(e.starts_with("locald.toml:3:15: unknown signal \"NOPE\""), "{e}");
}

#[test]
fn syntax_error_has_position() {
    let e = error("[services.web]\ncommand = \"x\n");
    assert!(e.starts_with("locald.toml:2:"), "{e}");
}

#[test]
fn missing_dependency_points_at_the_name() {
    let text =
        "[services.web]\ncommand = \"x\"\ndepends_on = [\"api\", \"db\"]\n[services.api]\ncommand = \"y\"\n";
    assert_eq!(error(text), "locald.toml:3:22: \"web\" depends on unknown service \"db\"");
}

#[test]
fn cycle_is_named_in_order() {
    let text = "[services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n\
                [services.b]\ncommand = \"x\"\ndepends_on = [\"c\"]\n\
                [services.c]\ncommand = \"x\"\ndepends_on = [\"a\"]\n";
    assert_eq!(error(text), "locald.toml:9:15: dependency cycle: a -> b -> c -> a");
}

#[test]
fn self_dependency() {
    let text = "[services.a]\ncommand = \"x\"\ndepends_on = { a = \"started\" }\n";
    assert_eq!(error(text), "locald.toml:3:16: \"a\" depends on itself");
}

#[test]
fn healthy_condition_needs_a_check() {
    let text =
        "[services.a]\ncommand = \"x\"\ndepends_on = { b = \"healthy\" }\n[services.b]\ncommand = \"y\"\n";
    assert_eq!(error(text), "locald.toml:3:16: condition healthy needs a health_check on service \"b\"");
}

#[test]
fn interpolation_error_points_inside_the_string() {
    let text = "[services.web]\ncommand = \"x\"\nenv = { API = \"at ${services.nope.url}\" }\n";
    assert_eq!(error(text), "locald.toml:3:19: no service named \"nope\"");
    let text = "[services.web]\ncommand = \"x ${services.web.colour}\"\n";
    assert_eq!(
        error(text),
        "locald.toml:2:14: unknown field \"colour\" (expected port, url, host or domain)"
    );
}

#[test]
fn check_needs_one_kind() {
    let text = "[services.web]\ncommand = \"x\"\nhealth_check = { interval = \"1s\" }\n";
    assert!(error(text).starts_with("locald.toml:3:16: a check needs exactly one of"), "{}", error(text));
}

#[test]
fn resolves_order_ports_env_domains_and_interpolation() {
    let text = r#"
[project]
name = "shop"

[services.web]
command = "serve --api ${services.api.url}"
port = 8080
depends_on = ["api"]
health_check = { http = "/health", status = 200 }

[services.api]
command = ["api", "--port", "${services.api.port}"]
env = { DB = "${services.db.host}:${services.db.port}" }
depends_on = { db = "completed_successfully" }
health_check = { tcp = true, interval = "250ms", retries = 5 }
restart = "always"
stop_signal = "INT"
stop_timeout = "3s"

[services.db]
command = "migrate"
restart = "no"
"#;
    let config = parse(text).unwrap();
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "api", "web"]);
    let (db, api, web) = (&config.services[0], &config.services[1], &config.services[2]);
    assert_eq!(web.port, 8080);
    assert_eq!(web.domain, "shop.localhost");
    assert_eq!(api.domain, "api.shop.localhost");
    assert_eq!(web.command, Some(Command::Shell(format!("serve --api http://127.0.0.1:{}", api.port))));
    assert_eq!(api.command, Some(Command::Argv(vec!["api".into(), "--port".into(), api.port.to_string()])));
    assert!(api.env.contains(&("DB".into(), format!("127.0.0.1:{}", db.port))));
    assert_eq!(api.env.last(), Some(&("PORT".into(), api.port.to_string())));
    assert_eq!(
        api.depends_on,
        vec![Dependency { name: "db".into(), condition: Condition::CompletedSuccessfully }]
    );
    assert_eq!(
        web.depends_on[0].condition,
        Condition::Healthy,
        "a dependency with a check defaults to healthy"
    );
    assert_eq!(api.health_check.as_ref().unwrap().interval, Duration::from_millis(250));
    assert_eq!(api.stop_signal, libc::SIGINT);
    assert_eq!(api.restart.policy, RestartPolicy::Always);
    assert_eq!(db.restart.policy, RestartPolicy::No);
}

#[test]
fn project_name_defaults_to_directory_and_named_service_gets_project_domain() {
    let dir = tempfile_dir("My Shop");
    let config = resolve_toml(
        &dir,
        Path::new("locald.toml"),
        "[services.my-shop]\ncommand = \"a\"\n[services.worker]\ncommand = \"b\"\n",
        &mut Fixed(41000),
    )
    .unwrap();
    assert_eq!(config.project.name, "my-shop");
    assert_eq!(config.services[0].domain, "my-shop.localhost");
    assert_eq!(config.services[1].domain, "worker.my-shop.localhost");
}

#[test]
fn procfile_with_dotenv() {
    let dir = tempfile_dir("procfile-app");
    std::fs::write(dir.join(".env"), "GREETING=hi\n").unwrap();
    let config = resolve_procfile(
        &dir,
        Path::new("Procfile"),
        "web: python3 -m http.server $PORT\nworker: ./w\n",
        &mut Fixed(41000),
    )
    .unwrap();
    assert_eq!(config.services.len(), 2);
    assert!(config.services[0].env.contains(&("GREETING".into(), "hi".into())));
    let e =
        resolve_procfile(&dir, Path::new("Procfile"), "web: a\nbroken line\n", &mut Fixed(1)).unwrap_err();
    assert_eq!(e.to_string(), "Procfile:2:1: expected `name: command`");
}

#[test]
fn backoff_doubles_and_caps() {
    let restart = Restart {
        policy: RestartPolicy::Always,
        max_restarts: 10,
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
    };
    let delays: Vec<u128> = (0..5).map(|n| restart.delay(n).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 500, 500]);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("locald-core-test-{}", std::process::id())).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn env_file_comes_before_env_and_port_last() {
    let dir = tempfile_dir("envfile");
    std::fs::write(dir.join("dev.env"), "A=from-file\nB=from-file\n").unwrap();
    let text = "[services.web]\ncommand = \"x\"\nenv_file = \"dev.env\"\nenv = { B = \"from-toml\" }\n";
    let config = resolve_toml(&dir, Path::new("locald.toml"), text, &mut Fixed(41000)).unwrap();
    let env = &config.services[0].env;
    let b = env.iter().rev().find(|(k, _)| k == "B").unwrap();
    assert_eq!(b.1, "from-toml", "env overrides env_file (later wins)");
    assert_eq!(env.last().unwrap().0, "PORT");
    let missing = "[services.web]\ncommand = \"x\"\nenv_file = \"nope.env\"\n";
    let e = resolve_toml(&dir, Path::new("locald.toml"), missing, &mut Fixed(41000)).unwrap_err();
    assert!(e.to_string().starts_with("locald.toml:3:12: cannot read"), "{e}");
    std::fs::write(dir.join("bad.env"), "OK=1\nnot a pair\n").unwrap();
    let bad = "[services.web]\ncommand = \"x\"\nenv_file = \"bad.env\"\n";
    let e = resolve_toml(&dir, Path::new("locald.toml"), bad, &mut Fixed(41000)).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.file.ends_with("bad.env"));
}

#[test]
fn an_image_service_takes_command_volumes_and_limits() {
    let config = parse(
        "[services.db]\nimage = \"./images/pg.tar\"\ncommand = [\"postgres\", \"-p\", \"${services.db.port}\"]\n\
         volumes = [\"./data:/var/lib/pg\", \"conf:/etc/pg:ro\", \"/srv/shared:/shared:rw\"]\n\
         memory = \"256M\"\npids = 64\ncwd = \"/var/lib/pg\"\nport = 5432\n",
    )
    .unwrap();
    let db = &config.services[0];
    assert_eq!(db.command, Some(Command::Argv(vec!["postgres".into(), "-p".into(), "5432".into()])));
    let container = db.container.as_ref().expect("an image service runs in a container");
    let dir = std::env::temp_dir();
    assert_eq!(container.image, "./images/pg.tar");
    assert_eq!(
        container.volumes,
        [
            Volume { host: dir.join("data"), container: "/var/lib/pg".into(), read_only: false },
            Volume { host: dir.join("conf"), container: "/etc/pg".into(), read_only: true },
            Volume { host: "/srv/shared".into(), container: "/shared".into(), read_only: false },
        ]
    );
    assert_eq!(container.memory_bytes, Some(256 << 20));
    assert_eq!(container.pids, Some(64));
    assert_eq!(container.workdir.as_deref(), Some("/var/lib/pg"));
    // The host-side cwd stays the project (health check commands run there).
    assert_eq!(db.cwd, dir);
}

#[test]
fn an_image_service_without_command_uses_the_images_own() {
    let config = parse("[services.cache]\nimage = \"./redis\"\nmemory = 1048576\n").unwrap();
    assert_eq!(config.services[0].command, None);
    assert_eq!(config.services[0].container.as_ref().unwrap().memory_bytes, Some(1 << 20));
}

#[test]
fn sizes_accept_the_usual_spellings() {
    use crate::config::raw::Size;
    for (text, bytes) in [
        ("512", 512),
        ("64k", 64 << 10),
        ("256M", 256 << 20),
        ("256MiB", 256 << 20),
        ("1.5G", 3 << 29),
        ("2GB", 2 << 30),
    ] {
        assert_eq!(Size::parse(text), Ok(Size(bytes)), "{text}");
    }
    for text in ["", "M", "12X", "-1G", "0", "1e9"] {
        assert!(Size::parse(text).is_err(), "{text:?} must be refused");
    }
}

#[test]
fn container_keys_are_checked_where_they_are_written() {
    assert_eq!(error("[services.db]\n"), "locald.toml:1:1: service \"db\" needs a command or an image");
    assert_eq!(
        error("[services.db]\ncommand = \"x\"\nvolumes = [\"./d:/d\"]\n"),
        "locald.toml:3:12: volumes applies only to services with an image"
    );
    assert_eq!(
        error("[services.db]\ncommand = \"x\"\nmemory = \"1G\"\n"),
        "locald.toml:3:10: memory applies only to services with an image"
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\nvolumes = [\"./d\"]\n"),
        "locald.toml:3:12: volume \"./d\" must be \"<host path>:<container path>[:ro]\""
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\nvolumes = [\"./d:/d\", \"./d:rel\"]\n"),
        "locald.toml:3:22: volume \"./d:rel\": container path \"rel\" must be absolute"
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\nvolumes = [\"./d:/d:rx\"]\n"),
        "locald.toml:3:12: volume \"./d:/d:rx\": unknown option \"rx\" (expected ro or rw)"
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\nvolumes = [\"../x:/d\"]\n"),
        "locald.toml:3:12: volume \"../x:/d\": the host path may not contain '..'"
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\nvolumes = [\"./a:/d\", \"./b:/d\"]\n"),
        "locald.toml:3:22: two volumes are mounted at /d"
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\npids = 0\n"),
        "locald.toml:3:8: pids must be at least 1"
    );
    assert_eq!(
        error("[services.db]\nimage = \"./i\"\ncwd = \"app\"\n"),
        "locald.toml:3:7: cwd of an image service \"app\" must be absolute"
    );
    let e = error("[services.db]\nimage = \"./i\"\nmemory = \"lots\"\n");
    assert!(e.starts_with("locald.toml:3:10: invalid size \"lots\""), "{e}");
}

#[test]
fn the_default_suffix_is_a_local_one_or_localhost() {
    assert_eq!(suffix_from(None), "localhost");
    assert_eq!(suffix_from(Some("test")), "test");
    // Real names on cloud and home networks: never a default suffix.
    assert_eq!(suffix_from(Some("home.arpa")), "localhost");
    assert_eq!(suffix_from(Some("internal")), "localhost");
    assert_eq!(suffix_from(Some("com")), "localhost");
    assert_eq!(suffix_from(Some("")), "localhost");
}

#[test]
fn extra_domains_are_kept_and_checked() {
    let config =
        parse("[services.web]\ncommand = \"x\"\ndomains = [\"shop.test\", \"www.shop.test\"]\n").unwrap();
    assert_eq!(config.services[0].domains, ["shop.test", "www.shop.test"]);
    let e = error("[services.web]\ncommand = \"x\"\ndomains = [\"ok.test\", \"Bad Name\"]\n");
    assert!(e.starts_with("locald.toml:3:23: domain \"Bad Name\" is not a valid lowercase host name"), "{e}");
}

#[test]
fn a_service_domain_is_checked_like_the_others() {
    let e = error("[services.web]\ncommand = \"x\"\ndomain = \"Shop.localhost\"\n");
    assert!(e.starts_with("locald.toml:3:10: domain \"Shop.localhost\" is not a valid"), "{e}");
}

#[test]
fn host_names_are_the_domain_the_alias_and_the_extra_domains() {
    let config = parse(
        "[project]\nname = \"shop\"\n[services.web]\ncommand = \"x\"\ndomains = [\"shop.test\"]\n\
         [services.api_v2]\ncommand = \"y\"\n",
    )
    .unwrap();
    let names = |service: &str| {
        let s = config.services.iter().find(|s| s.name == service).unwrap();
        s.host_names(&config.project.domain)
    };
    assert_eq!(names("web"), ["shop.localhost", "web.shop.localhost", "shop.test"]);
    assert_eq!(names("api_v2"), ["api-v2.shop.localhost"]);
}

#[test]
fn trust_local_ca_is_per_project_and_per_service() {
    let config = parse(
        "[project]\ntrust_local_ca = true\n[services.a]\ncommand = \"x\"\n\
         [services.b]\ncommand = \"y\"\ntrust_local_ca = false\n",
    )
    .unwrap();
    let trusts: Vec<(&str, bool)> =
        config.services.iter().map(|s| (s.name.as_str(), s.trust_local_ca)).collect();
    assert_eq!(trusts, [("a", true), ("b", false)]);
    let config =
        parse("[services.a]\ncommand = \"x\"\n[services.b]\ncommand = \"y\"\ntrust_local_ca = true\n")
            .unwrap();
    let trusts: Vec<bool> = config.services.iter().map(|s| s.trust_local_ca).collect();
    assert_eq!(trusts, [false, true], "off unless asked for");
}

#[test]
fn https_redirect_is_off_unless_the_project_asks() {
    assert!(!parse("[services.a]\ncommand = \"x\"\n").unwrap().project.https_redirect);
    assert!(
        parse("[project]\nhttps_redirect = true\n[services.a]\ncommand = \"x\"\n")
            .unwrap()
            .project
            .https_redirect
    );
    let e = error("[services.a]\ncommand = \"x\"\nhttps_redirect = true\n");
    assert!(e.contains("unknown field `https_redirect`"), "a project key, not a service key: {e}");
}

#[test]
fn an_image_services_user_is_checked_and_kept() {
    assert_eq!(
        error("[services.db]\ncommand = \"x\"\nuser = \"app\"\n"),
        "locald.toml:3:8: user applies only to services with an image"
    );
    for bad in ["", "a:b:c", ":g", "u:", "a b"] {
        let message = error(&format!("[services.db]\nimage = \"./i\"\nuser = \"{bad}\"\n"));
        assert!(message.contains("is not `name`, `uid`, `name:group` or `uid:gid`"), "{bad:?}: {message}");
    }
}
