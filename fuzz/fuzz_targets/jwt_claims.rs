//! JWT claims: whatever a validly signed token holds (times near the ends of every number
//! type, leeways up to `u64::MAX`, any strings as selectors), `JwtPolicy` answers without
//! panicking: claims whose end is exactly `exp + leeway`, or a `401`.

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use serde_json::{json, Value};
use tower_sse::{JwtPolicy, Selector, Topic};

const SECRET: &[u8] = b"the fuzz target's secret, long enough";

#[derive(Debug, Arbitrary)]
enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    NearMax(u16),
    Text(String),
    Missing,
}

impl Number {
    fn json(&self) -> Option<Value> {
        match self {
            Self::Unsigned(n) => Some(json!(n)),
            Self::Signed(n) => Some(json!(n)),
            Self::Float(f) => Some(json!(f)),
            Self::NearMax(d) => Some(json!(u64::MAX - u64::from(*d))),
            Self::Text(s) => Some(json!(s)),
            Self::Missing => None,
        }
    }

    /// The whole seconds a valid token's claim stands for.
    fn seconds(&self) -> Option<u128> {
        match self {
            Self::Unsigned(n) => Some(u128::from(*n)),
            Self::Signed(n) => u128::try_from(*n).ok(),
            Self::Float(f) => (f.is_finite() && *f >= 0.0).then_some(*f as u128),
            Self::NearMax(d) => Some(u128::from(u64::MAX - u64::from(*d))),
            Self::Text(_) | Self::Missing => None,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    exp: Number,
    nbf: Number,
    leeway: u64,
    subscribe: Vec<String>,
    publish: Vec<String>,
    topic: String,
}

fuzz_target!(|input: Input| {
    let mut claims = json!({ "subscribe": input.subscribe, "publish": input.publish });
    if let Some(exp) = input.exp.json() {
        claims["exp"] = exp;
    }
    if let Some(nbf) = input.nbf.json() {
        claims["nbf"] = nbf;
    }
    let key = EncodingKey::from_secret(SECRET);
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let (parts, ()) = http::Request::post("/publish/t")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts();
    let policy = JwtPolicy::hs256(SECRET).leeway(Duration::from_secs(input.leeway));
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    match policy.claims(&parts) {
        Ok(verified) => {
            let exp = input
                .exp
                .seconds()
                .expect("a valid token has a numeric exp");
            let end = verified
                .expires_at()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap();
            assert_eq!(u128::from(end.as_secs()), exp + u128::from(input.leeway));
            assert!(end.as_secs() > before, "an expired token was accepted");
            assert_eq!(verified.subscribe().len(), input.subscribe.len());
            assert!(input.subscribe.iter().all(|s| Selector::new(s).is_ok()));
            assert!(input.publish.iter().all(|s| Selector::new(s).is_ok()));
        }
        Err(denied) => assert!(denied.is_unauthenticated(), "{denied}"),
    }
    if let Ok(topic) = Topic::new(&input.topic) {
        // Whatever the claims, the answers are a grant, a 401 or a 403: never a panic.
        let _ = tower_sse::Authorize::subscribe(&policy, &parts, std::slice::from_ref(&topic));
        let _ = tower_sse::Authorize::publish(&policy, &parts, &topic);
    }
});
