//! The demo page (`examples/demo/page.html`) in headless Chromium, against real demo processes:
//! subscribe, publish from the page and from outside, refused streams and why, an outage and a
//! resume after a restart, and the layout from 390 px to wide screens.
//!
//! Needs Chromium, Node.js and `npm install --no-package-lock` in `tests/browser`; without them
//! the tests print `SKIPPED` and pass, unless `TOWER_SSE_REQUIRE_BROWSER=1` (see
//! `support::browser`). The README's screenshot comes from the ignored test
//! `screenshot_for_the_readme`.

mod support;

use std::{net::SocketAddr, path::Path};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::{
    browser::Browser,
    demo::Demo,
    http::{request, SseClient},
    redis::RedisServer,
};

/// The page's log entries, oldest first: each line's data attributes (`kind`, `id`, `type`,
/// `topic`, `status`, `reason`, `replayed`) and its `text`.
const LOG: &str = "[...document.querySelectorAll('#log li')].reverse()\
    .map((li) => ({ ...li.dataset, text: li.innerText }))";

/// A JavaScript string literal.
fn js(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// An expression for the first log entry that `predicate` (over an entry `e`) holds for.
fn entry(predicate: &str) -> String {
    format!("{LOG}.find((e) => {predicate})")
}

/// An expression for the event with id `id` in the log.
fn event(id: &str) -> String {
    entry(&format!("e.kind === 'event' && e.id === {}", js(id)))
}

/// The text of the element at `selector`.
fn text(browser: &mut Browser, selector: &str) -> String {
    let expr = format!("document.querySelector({}).innerText", js(selector));
    browser.eval(&expr).as_str().unwrap_or_default().to_owned()
}

/// Publishes `data` through the demo at `addr` (`path` is `/publish/...`) and returns the id.
fn publish(runtime: &tokio::runtime::Runtime, addr: SocketAddr, path: &str, data: &str) -> String {
    let (status, _, body) = runtime.block_on(request(addr, "POST", path, data));
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["id"].as_str().unwrap().to_owned()
}

/// Publishes from the page's form and returns the id the page shows from the `202`.
fn publish_from_page(browser: &mut Browser, topic: &str, kind: &str, data: &str) -> String {
    let before = browser.eval(&format!("{LOG}.filter((e) => e.kind === 'publish').length"));
    browser.fill("#ptopic", topic);
    browser.fill("#ptype", kind);
    browser.fill("#data", data);
    browser.click("#publish button[type=submit]");
    let expr = format!("{LOG}.filter((e) => e.kind === 'publish')[{before}]");
    let published = browser.wait_for("the publish's 202", &expr);
    let id = published["id"].as_str().unwrap().to_owned();
    assert!(
        text(browser, "#presult").contains(&id),
        "the result names the id"
    );
    id
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn the_page_shows_events_from_the_page_and_from_outside() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let runtime = runtime();
    let demo = Demo::start(&[]);
    browser.viewport(1100, 900);
    browser.goto(&format!("http://{}/", demo.addr));

    let fresh = browser.wait_for("a fresh stream", &entry("e.status === 'fresh'"));
    assert!(fresh["text"].as_str().unwrap().contains("no resume point"));
    assert!(text(&mut browser, "#state").starts_with("open: fresh"));
    // Nothing failed while loading: no missing favicon, no script error.
    assert_eq!(browser.problems(), Vec::<String>::new());

    // Published from the page: the 202's id, then the event with that id.
    let id = publish_from_page(&mut browser, "demo", "", "hello from the page");
    let seen = browser.wait_for("the event published from the page", &event(&id));
    assert_eq!(seen["type"], "message");
    assert_eq!(seen["topic"], "demo");
    assert!(seen["text"]
        .as_str()
        .unwrap()
        .contains("hello from the page"));

    // A type the user adds is listened for: an event of it published from outside appears.
    browser.fill("#ltype", "order");
    browser.click("#listen button");
    browser.wait_for(
        "the added type among the listened ones",
        "document.getElementById('types').innerText.includes('order')",
    );
    let id = publish(
        &runtime,
        demo.addr,
        "/publish/demo?event=order",
        "17 shipped",
    );
    let seen = browser.wait_for("the typed event from outside", &event(&id));
    assert_eq!(seen["type"], "order");
    assert!(seen["text"].as_str().unwrap().contains("17 shipped"));

    // A type published from the form is listened for from then on.
    let id = publish_from_page(&mut browser, "demo", "alert", "disk full");
    let seen = browser.wait_for("the typed event from the page", &event(&id));
    assert_eq!(seen["type"], "alert");

    // A refused publish is shown with the server's answer.
    browser.fill("#ptopic", "no spaces allowed");
    browser.click("#publish button[type=submit]");
    let refused = browser.wait_for("the refused publish", &entry("e.status === '400'"));
    assert!(refused["text"].as_str().unwrap().contains("invalid topic"));
    let problems = browser.problems();
    assert!(
        !problems.is_empty() && problems.iter().all(|p| p.contains("400")),
        "only the refused publish's 400: {problems:?}"
    );
}

#[test]
fn the_page_fits_from_390_px_to_wide_screens() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let demo = Demo::start(&[]);
    // What is out of place: sideways scrolling (of the page or the log), a control outside its
    // panel, the words of a label or button broken over lines, fields of one row on different
    // rows.
    let layout = "(() => {
        const out = [];
        for (const el of [document.documentElement, document.getElementById('log')]) {
            if (el.scrollWidth > el.clientWidth) {
                out.push((el.id || 'the page') + ' scrolls sideways: ' + el.scrollWidth + ' > ' + el.clientWidth);
            }
        }
        for (const panel of document.querySelectorAll('.panel')) {
            const box = panel.getBoundingClientRect();
            for (const el of panel.querySelectorAll('input, button, label')) {
                const r = el.getBoundingClientRect();
                if (r.left < box.left || r.right > box.right) out.push(el.outerHTML.slice(0, 60) + ' sticks out');
            }
        }
        for (const el of document.querySelectorAll('label, button')) {
            const words = [...el.childNodes].find((n) => n.nodeType === 3 && n.textContent.trim());
            const range = document.createRange();
            range.selectNodeContents(words);
            const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
            if (lines.size > 1) out.push(JSON.stringify(words.textContent.trim()) + ' wraps');
        }
        const top = (id) => document.getElementById(id).getBoundingClientRect().top;
        if (top('topics') !== top('token')) out.push('topics and token on different rows');
        if (top('ptopic') !== top('ptype')) out.push('topic and type on different rows');
        return out;
    })()";
    let long = "x".repeat(400);
    for width in [390, 1100, 1600] {
        browser.viewport(width, 900);
        browser.goto(&format!("http://{}/", demo.addr));
        browser.wait_for("a fresh stream", &entry("e.status === 'fresh'"));
        // A long word in an event must wrap, not widen the page.
        let id = publish_from_page(&mut browser, "demo", "", &long);
        browser.wait_for("the long event", &event(&id));
        assert_eq!(browser.eval(layout), json!([]), "at {width} px");
    }
}

#[test]
fn the_page_says_why_a_stream_was_refused() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let runtime = runtime();
    let secret = "secret of the page test";
    let demo = Demo::start(&["--jwt-secret", secret]);
    let token = |subscribe: &[&str], ttl: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "sub": "page",
            "exp": now.saturating_add_signed(ttl),
            "subscribe": subscribe,
            "publish": ["demo"],
        });
        let key = EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
    };
    browser.viewport(1100, 900);
    browser.goto(&format!("http://{}/", demo.addr));

    // (status, what the server says, what the page says) for each way to be refused.
    let cases = [
        (None, "demo", "401", "no token", "needs a valid token"),
        (
            Some(token(&["other"], 600)),
            "demo",
            "403",
            "may not subscribe to topic demo",
            "may not read",
        ),
        (
            Some(token(&["demo"], -600)),
            "demo",
            "401",
            "expired",
            "needs a valid token",
        ),
        (
            Some(token(&["demo"], 600)),
            "demo, no spaces",
            "400",
            "invalid topic",
            "not valid",
        ),
    ];
    for (n, (token, topics, status, says, words)) in cases.into_iter().enumerate() {
        if let Some(token) = &token {
            browser.fill("#token", token);
        }
        browser.fill("#topics", topics);
        if n > 0 {
            browser.click("#connect");
        }
        let expr = format!("{LOG}.filter((e) => e.kind === 'refused')[{n}]");
        let refused = browser.wait_for(&format!("refusal {n} ({status})"), &expr);
        assert_eq!(refused["status"], status, "{refused}");
        assert!(
            refused["reason"].as_str().unwrap().contains(says),
            "{refused}"
        );
        assert!(
            refused["text"].as_str().unwrap().contains(words),
            "{refused}"
        );
        let state = text(&mut browser, "#state");
        assert!(state.starts_with(&format!("refused ({status})")), "{state}");
        assert!(state.contains(says), "{state}");
    }

    // With a good token, the stream opens and the page publishes with it.
    browser.fill("#token", &token(&["demo"], 600));
    browser.fill("#topics", "demo");
    browser.click("#connect");
    browser.wait_for("a fresh stream", &entry("e.status === 'fresh'"));
    let id = publish_from_page(&mut browser, "demo", "", "with a token");
    browser.wait_for("the event published with a token", &event(&id));

    // A server at its stream limit says so.
    let full = Demo::start(&["--max-connections", "1"]);
    let held = runtime.block_on(SseClient::connect(full.addr, "/events/demo", None));
    assert_eq!(held.status, 200);
    browser.goto(&format!("http://{}/", full.addr));
    let refused = browser.wait_for("the refusal at the limit", &entry("e.kind === 'refused'"));
    assert_eq!(refused["status"], "503", "{refused}");
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .contains("too many open event streams"));
    drop(held);
}

#[test]
fn the_page_records_an_outage_and_resumes_after_a_restart() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let runtime = runtime();
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--backend", "streams"];
    let mut demo = Demo::start(&args);
    let other = Demo::start(&args);
    let addr = demo.addr;
    browser.viewport(1100, 900);
    browser.goto(&format!("http://{addr}/"));
    browser.wait_for("a fresh stream", &entry("e.status === 'fresh'"));
    browser.fill("#ltype", "order");
    browser.click("#listen button");
    let before = publish_from_page(&mut browser, "demo", "", "before the restart");
    browser.wait_for("the event before the restart", &event(&before));

    let stopped = demo.terminate().expect("the demo stops");
    assert!(stopped.success());
    let lost = browser.wait_for("the outage", &entry("e.kind === 'outage'"));
    let lost = lost["text"].as_str().unwrap().to_owned();
    assert!(lost.contains("connection lost, reconnecting"), "{lost}");
    assert!(
        lost.contains(&before),
        "names the id it resumes after: {lost}"
    );

    // Published on another instance while this one is down.
    let missed = [
        publish(&runtime, other.addr, "/publish/demo", "missed one"),
        publish(
            &runtime,
            other.addr,
            "/publish/demo?event=order",
            "missed two",
        ),
    ];
    // The browser retries while the server is down; the outage's line counts the attempts.
    browser.wait_for(
        "a failed attempt",
        &entry("e.kind === 'outage' && e.text.includes('still down after 1 attempt')"),
    );
    demo = Demo::start_at(addr, &args);

    let resumed = browser.wait_for("the resume", &entry("e.status === 'resumed'"));
    assert_eq!(resumed["replayed"], "2", "{resumed}");
    let words = resumed["text"].as_str().unwrap();
    assert!(
        words.contains("resumed 2") && words.contains("2 missed events follow"),
        "{words}"
    );
    assert!(words.contains(&format!("after {before}")), "{words}");
    browser.wait_for(
        "the reconnect",
        &entry("e.text.includes('reconnected after')"),
    );
    // The missed events follow the status, in order, the typed one too.
    browser.wait_for("the missed events", &event(&missed[1]));
    let log = browser.eval(LOG);
    let at = |predicate: &dyn Fn(&Value) -> bool| {
        log.as_array()
            .unwrap()
            .iter()
            .position(predicate)
            .unwrap_or_else(|| panic!("not in the log: {log}"))
    };
    let status = at(&|e| e["status"] == "resumed");
    let first = at(&|e| e["id"] == missed[0].as_str());
    let second = at(&|e| e["id"] == missed[1].as_str());
    assert!(status < first && first < second, "{log}");
    assert_eq!(log[second]["type"], "order");

    let after = publish_from_page(&mut browser, "demo", "", "after the restart");
    browser.wait_for("the event after the restart", &event(&after));
    drop(demo);
}

/// The page shows how many streams follow each of its topics, on every instance: its own
/// first, then one more when a stream opens on another instance.
#[test]
fn the_page_shows_how_many_streams_follow_each_topic() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let runtime = runtime();
    let args = ["--redis", &redis.url()];
    let (page, other) = (Demo::start(&args), Demo::start(&args));
    browser.viewport(1100, 900);
    browser.goto(&format!("http://{}/", page.addr));
    let count = |n: u32| {
        format!("document.querySelector('#presence [data-topic=\"demo\"][data-count=\"{n}\"]')")
    };
    browser.wait_for("the page's own stream counted", &count(1));
    let shown = text(&mut browser, "#presence");
    assert!(
        shown.contains("on every server") && shown.contains("demo 1"),
        "{shown}"
    );

    let stream = runtime.block_on(SseClient::connect(other.addr, "/events/demo", None));
    assert_eq!(stream.status, 200);
    browser.wait_for("a stream on the other instance counted", &count(2));
    assert_eq!(browser.problems(), Vec::<String>::new());
    drop(stream);
}

#[test]
#[ignore = "writes docs/demo.png; run by hand with --ignored"]
fn screenshot_for_the_readme() {
    let mut browser = Browser::start().expect("Chromium, Node.js and puppeteer-core");
    let runtime = runtime();
    let mut demo = Demo::start(&[]);
    let addr = demo.addr;
    browser.viewport(1100, 860);
    browser.goto(&format!("http://{addr}/"));
    browser.wait_for("a fresh stream", &entry("e.status === 'fresh'"));
    let id = publish_from_page(&mut browser, "demo", "", "hello");
    browser.wait_for("the event", &event(&id));
    // A restart of the in-process bus: the page reconnects and says what that means.
    demo.terminate();
    browser.wait_for("the outage", &entry("e.kind === 'outage'"));
    demo = Demo::start_at(addr, &[]);
    browser.wait_for("the reset", &entry("e.status === 'reset'"));
    browser.fill("#ltype", "order");
    browser.click("#listen button");
    let id = publish(
        &runtime,
        addr,
        "/publish/demo?event=order",
        r#"{"order":17,"state":"shipped"}"#,
    );
    browser.wait_for("the typed event", &event(&id));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/demo.png");
    browser.screenshot(&path);
    drop(demo);
}
