//! Headless Chromium for the page tests, driven by `tests/browser/driver.mjs` (puppeteer-core
//! on the system's Chromium) one JSON command per line.
//!
//! [`Browser::start`] needs Chromium (`chromium` on `PATH`, or `CHROMIUM`), Node.js and the
//! driver's packages (`npm install --no-package-lock` in `tests/browser`). When one is missing
//! it prints `SKIPPED` and returns `None`, so the tests pass vacuously; with
//! `TOWER_SSE_REQUIRE_BROWSER=1` (as CI sets) it panics instead.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// How long a page may take to show what a test waits for.
pub(crate) const PAGE_WAIT: Duration = Duration::from_secs(30);

/// How long one driver command may take beyond its own wait.
const COMMAND_SLACK: Duration = Duration::from_secs(30);

/// A headless Chromium with one page, closed on drop.
pub(crate) struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
}

impl Browser {
    /// Starts the driver and its browser, or returns `None` (after saying so loudly) when
    /// something it needs is missing and `TOWER_SSE_REQUIRE_BROWSER` is not `1`.
    pub(crate) fn start() -> Option<Self> {
        if let Some(missing) = missing_parts() {
            if std::env::var("TOWER_SSE_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{missing}, and TOWER_SSE_REQUIRE_BROWSER=1");
            }
            eprintln!("SKIPPED: {missing} (set TOWER_SSE_REQUIRE_BROWSER=1 to fail)");
            return None;
        }
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(driver_dir())
            .env("CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut browser = Self {
            stdin: child.stdin.take(),
            child,
            answers,
        };
        let ready = browser.answer(COMMAND_SLACK);
        assert_eq!(
            ready,
            Ok(json!("ready")),
            "the browser driver did not start"
        );
        Some(browser)
    }

    /// Sets the page's viewport in CSS pixels.
    pub(crate) fn viewport(&mut self, width: u32, height: u32) {
        self.run(json!({"op": "viewport", "width": width, "height": height}));
    }

    /// Loads `url` and waits for its `load` event.
    pub(crate) fn goto(&mut self, url: &str) {
        self.run(json!({"op": "goto", "url": url}));
    }

    /// Replaces the text of the input at `selector` by typing `text`.
    pub(crate) fn fill(&mut self, selector: &str, text: &str) {
        self.run(json!({"op": "fill", "selector": selector, "text": text}));
    }

    /// Clicks the element at `selector`.
    pub(crate) fn click(&mut self, selector: &str) {
        self.run(json!({"op": "click", "selector": selector}));
    }

    /// The value of a JavaScript expression in the page.
    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        self.run(json!({"op": "eval", "expr": expr}))
    }

    /// Waits until the JavaScript expression `expr` is truthy in the page and returns its value;
    /// fails the test with `what` and the page's log when it does not become so in time.
    pub(crate) fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let command = json!({
            "op": "wait",
            "expr": expr,
            "timeout_ms": PAGE_WAIT.as_millis() as u64,
        });
        match self.call(command, PAGE_WAIT + COMMAND_SLACK) {
            Ok(value) => value,
            Err(error) => {
                let log = self.eval("document.getElementById('log').innerText");
                let state = self.eval("document.getElementById('state').innerText");
                panic!(
                    "the page did not show {what}: {error}\nstate: {}\nlog (newest first):\n{}",
                    state.as_str().unwrap_or_default(),
                    log.as_str().unwrap_or_default()
                );
            }
        }
    }

    /// Saves a PNG of the viewport.
    pub(crate) fn screenshot(&mut self, path: &Path) {
        self.run(json!({"op": "screenshot", "path": path}));
    }

    /// Console errors, page errors and answers of 400 or more since the last call.
    pub(crate) fn problems(&mut self) -> Vec<String> {
        serde_json::from_value(self.run(json!({"op": "problems"}))).expect("a list of problems")
    }

    fn run(&mut self, command: Value) -> Value {
        let what = command.to_string();
        self.call(command, COMMAND_SLACK)
            .unwrap_or_else(|error| panic!("browser command {what} failed: {error}"))
    }

    fn call(&mut self, command: Value, timeout: Duration) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().expect("the driver's stdin is open");
        writeln!(stdin, "{command}").expect("write to the browser driver");
        stdin.flush().expect("flush the browser driver's stdin");
        self.answer(timeout)
    }

    fn answer(&mut self, timeout: Duration) -> Result<Value, String> {
        let line = self
            .answers
            .recv_timeout(timeout)
            .expect("the browser driver answers in time");
        let mut answer: Value = serde_json::from_str(&line).expect("the driver answers JSON");
        match answer.get_mut("error") {
            Some(error) => Err(error.to_string()),
            None => Ok(answer["ok"].take()),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of input closes the browser; a driver that does not exit in time is killed.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the driver script and its `node_modules` live.
fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The Chromium to drive: `CHROMIUM`, or `chromium` found on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

/// What keeps the browser tests from running, if anything.
fn missing_parts() -> Option<String> {
    if !chromium().is_file() {
        return Some("Chromium not found (apt-get install chromium, or set CHROMIUM)".to_owned());
    }
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("Node.js not found".to_owned());
    }
    if !driver_dir().join("node_modules/puppeteer-core").is_dir() {
        return Some(
            "puppeteer-core not installed (npm install --no-package-lock in tests/browser)"
                .to_owned(),
        );
    }
    None
}
