//! Just enough of the W3C WebDriver protocol to drive Debian's headless Chromium through
//! `chromedriver`: plain JSON over HTTP/1.1 with hyper (already in the tree), one connection
//! per command. The driver process is killed when this is dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

pub struct Driver {
    child: Child,
    port: u16,
    session: String,
    runtime: tokio::runtime::Runtime,
}

impl Driver {
    /// Starts `chromedriver` (its browser gets `home` as `HOME`, so it uses the NSS database
    /// there) and opens a headless session.
    pub fn start(home: &std::path::Path) -> Self {
        for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(binary).is_file(),
                "{binary} is needed for the browser tests (apt-get install chromium chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .env("HOME", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut driver = Self { child, port, session: String::new(), runtime };
        let ready = crate::wait_for(Duration::from_secs(20), || {
            driver.call("GET", "/status", None).ok().filter(|v| v["value"]["ready"] == true)
        });
        assert!(ready.is_some(), "chromedriver did not get ready");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1400,900",
        ];
        let data_dir = format!("--user-data-dir={}", home.join("chromium").display());
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args.iter().copied().chain([data_dir.as_str()]).collect::<Vec<_>>()},
        }}});
        let answer = driver.call("POST", "/session", Some(capabilities)).expect("new session");
        driver.session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
        driver
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let port = self.port;
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let path = path.to_owned();
        self.runtime.block_on(async move {
            let stream =
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", format!("127.0.0.1:{port}"))
                .header("content-type", "application/json")
                .body(Full::new(bytes))
                .unwrap();
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let answer = self.call(method, &format!("/session/{}{path}", self.session), body).unwrap();
        assert!(answer["value"].get("error").is_none(), "{path}: {answer}");
        answer["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({"url": url})));
    }

    pub fn current_url(&self) -> String {
        self.command("GET", "/url", None).as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn script(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    /// Polls `script` until it returns something other than `null`/`false`, or panics after
    /// `timeout` saying `what`.
    pub fn wait(&self, timeout: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(script);
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A real click on the element `css` selects.
    pub fn click(&self, css: &str) {
        let found = self.command("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id =
            found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned();
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let found = self.command("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id =
            found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_owned();
        self.command("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    /// A Chrome DevTools Protocol command (chromedriver's `goog/cdp/execute`), for what
    /// WebDriver has no command for: emulated media features, a full-page capture.
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.command("POST", "/goog/cdp/execute", Some(json!({"cmd": cmd, "params": params})))
    }

    /// Makes the page see `prefers-color-scheme: dark` (or light), as a system preference would.
    pub fn prefer_color_scheme(&self, scheme: &str) {
        let features = json!([{"name": "prefers-color-scheme", "value": scheme}]);
        self.cdp("Emulation.setEmulatedMedia", json!({"features": features}));
    }

    /// A PNG of the whole page, beyond the window's height.
    pub fn full_page_screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let metrics = self.cdp("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let clip = json!({"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1});
        let shot = self.cdp(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true, "clip": clip}),
        );
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap()
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let encoded = self.command("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
