//! The wiring against a real supervisor (no proxy, `/etc/hosts` recorded instead of written).

use std::sync::Mutex;

use super::*;

const SHOP: &str = "[project]\nname = \"shop\"\n\n[services.web]\ncommand = \"exec sleep 30\"\n\
                    domains = [\"shop.test\"]\n\n[services.api]\ncommand = \"exec sleep 30\"\n";

#[tokio::test]
async fn a_change_is_in_hosts_when_its_generation_is_applied_with_the_names_the_routes_hold() {
    let state = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("locald.toml"), SHOP).unwrap();
    let supervisor = Supervisor::new(state.path().to_owned(), crate::shim::fake::Fake::new().shared());
    let synced: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let record = synced.clone();
    let wiring = Wiring::start_with(
        &supervisor,
        None,
        Arc::new(move |names: &[String]| {
            record.lock().unwrap().push(names.to_vec());
            Ok(())
        }),
    );
    assert!(synced.lock().unwrap().is_empty(), "what runs at start is routed, /etc/hosts left alone");

    let (up, _) = supervisor.up(project.path()).unwrap();
    wiring.applied(supervisor.generation()).await;
    let routes = project_routes(std::slice::from_ref(&up));
    assert_eq!(routes[0].name, "shop");
    let ports: Vec<_> = routes[0].services.iter().map(|s| (s.name.clone(), s.port)).collect();
    let handles: Vec<_> = up.services.iter().map(|h| (h.service.name.clone(), h.service.port)).collect();
    assert_eq!(ports, handles, "every service, in the supervisor's order, on its port");
    let mut expected = crate::hosts::routed_names([&up.config]);
    assert!(expected.contains(&"shop.test".to_owned()), "{expected:?}");
    let mut got = synced.lock().unwrap().last().cloned().expect("synced before `up` went on");
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "/etc/hosts gets the names the proxy routes");

    assert!(supervisor.down(project.path()).await);
    wiring.applied(supervisor.generation()).await;
    assert_eq!(synced.lock().unwrap().last(), Some(&Vec::new()), "the names go with the project");
    supervisor.shutdown().await;
}
