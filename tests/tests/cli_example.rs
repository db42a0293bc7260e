//! examples/quickstart works as its README says: `up` gets every service ready, the front end
//! serves a page built from the API it reaches through the interpolated URL, the worker runs,
//! and only what serves gets a URL.

use std::io::{Read, Write};
use std::path::Path;

use locald_tests::daemon::Daemon;

#[test]
fn quickstart_comes_up_and_the_front_end_reaches_the_api() {
    let daemon = Daemon::new();
    // A copy, so the seed job writes its data file outside the source tree.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
    let dir = daemon.root.join("projects/quickstart");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&example).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let up = daemon.ok(&["up", dir.to_str().unwrap()]);
    assert!(up.contains("quickstart is ready"), "{up}");
    assert_eq!(daemon.service("quickstart", "seed")["state"], "completed");
    assert_eq!(daemon.service("quickstart", "api")["state"], "healthy");
    assert_eq!(daemon.service("quickstart", "web")["state"], "healthy");
    assert_eq!(daemon.service("quickstart", "worker")["state"], "running");
    assert!(up.contains("https://quickstart.localhost"), "{up}");
    // The worker takes no connections (`port = false`) and the seed job has done its work:
    // neither gets a URL.
    for (service, state) in [("worker", "running"), ("seed", "completed")] {
        assert!(daemon.service("quickstart", service)["url"].is_null(), "{service} has a URL");
        assert!(up.contains(&format!("  {service:<16} ({state})\n")), "{up}");
        assert!(!up.contains(&format!("{service}.quickstart.localhost")), "{up}");
    }

    let web = daemon.service("quickstart", "web");
    let page = get(web["port"].as_u64().unwrap() as u16, "/");
    assert!(page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<li>tea</li>"), "the page lists the API's items: {page}");
    let api_port = daemon.service("quickstart", "api")["port"].as_u64().unwrap();
    assert!(page.contains(&format!("http://127.0.0.1:{api_port}")), "web found the API by interpolation");

    daemon.ok(&["down", dir.to_str().unwrap()]);
}

fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: quickstart.localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}
