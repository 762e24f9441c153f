//! [`JwtPolicy`]: authorization by JSON Web Tokens naming the topics a client may use.

use std::{
    error::Error as StdError,
    fmt,
    future::{ready, Ready},
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::request::Parts;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use self::validity::{validity, NumericDate};
use super::{bearer_token, header_token, Authorize, Denied, Grant, Selector};
use crate::bus::Topic;

mod validity;

/// An [`Authorize`] policy that reads a signed JWT from the request and allows the topics its
/// claims select.
///
/// To subscribe, the token comes in an `Authorization: Bearer TOKEN` header, an `access_token`
/// query parameter (for `EventSource`, which cannot set headers) or a cookie named `sse_token`
/// (see [`bearer_token`](crate::auth::bearer_token)). To publish, it comes in the `Authorization`
/// header only: a publish whose token is only in a cookie or the query is refused with `401`,
/// as a cross-site form could otherwise publish with a visitor's cookie (see [`Authorize`]).
///
/// Its claims:
///
/// ```json
/// {"sub": "user-1", "exp": 1893456000, "subscribe": ["org1:*"], "publish": ["org1:orders"]}
/// ```
///
/// `subscribe` and `publish` list [`Selector`]s: an exact topic, `*`, or a prefix ending in a
/// separator and `*` (`org1:*`). A missing list allows nothing. `exp` is required; `nbf` is
/// honoured when present. Both are checked with the [`leeway`](Self::leeway) in checked
/// arithmetic: a token whose `exp` plus the leeway is beyond what the clock can represent is
/// refused.
///
/// - No token, or one that is malformed, wrongly signed, signed with another algorithm than
///   the policy's (`alg: none` included), expired, not yet valid, or whose claims hold a
///   string that is not a selector (the message names it): `401`.
/// - A valid token whose selectors do not cover a requested topic (any one of the topics of a
///   stream): `403`.
/// - A stream opened with a valid token ends when the token expires, with a comment telling
///   the client to reconnect with a fresh token.
///
/// Cloning is cheap (a reference count). The `Debug` output never shows the key.
///
/// # Example
///
/// ```
/// use tower_sse::{EventBus, JwtPolicy, SseLayer};
///
/// let policy = JwtPolicy::hs256(b"a secret of at least 32 bytes, really");
/// let layer = SseLayer::new(EventBus::memory()).authorize(policy.clone());
/// // In the handler that publishes: `policy.publish(&parts, &topic)?`.
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct JwtPolicy {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
    leeway: Duration,
}

/// A public key that could not be read.
#[derive(Clone)]
pub struct InvalidKey {
    message: String,
}

impl fmt::Debug for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InvalidKey").field(&self.message).finish()
    }
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid key: {}", self.message)
    }
}

impl StdError for InvalidKey {}

impl JwtPolicy {
    /// Accepts tokens signed with HMAC-SHA256 (`HS256`) and `secret`.
    pub fn hs256(secret: impl AsRef<[u8]>) -> Self {
        Self::new(DecodingKey::from_secret(secret.as_ref()), Algorithm::HS256)
    }

    /// Accepts tokens signed with RSA PKCS#1 v1.5 and SHA-256 (`RS256`), verified with a PEM
    /// public key (`-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`).
    ///
    /// # Errors
    ///
    /// When `public_key` is not a PEM RSA public key.
    pub fn rs256_pem(public_key: impl AsRef<[u8]>) -> Result<Self, InvalidKey> {
        let key = DecodingKey::from_rsa_pem(public_key.as_ref()).map_err(invalid_key)?;
        Ok(Self::new(key, Algorithm::RS256))
    }

    /// Accepts tokens signed with ECDSA on P-256 and SHA-256 (`ES256`), verified with a PEM
    /// public key (`-----BEGIN PUBLIC KEY-----`).
    ///
    /// # Errors
    ///
    /// When `public_key` is not a PEM EC public key.
    pub fn es256_pem(public_key: impl AsRef<[u8]>) -> Result<Self, InvalidKey> {
        let key = DecodingKey::from_ec_pem(public_key.as_ref()).map_err(invalid_key)?;
        Ok(Self::new(key, Algorithm::ES256))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        // `exp` and `nbf` are checked by `validity`, in checked arithmetic: the library's own
        // check adds and subtracts the leeway unchecked.
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        Self {
            inner: Arc::new(Inner {
                key,
                validation,
                algorithm,
                leeway: Duration::ZERO,
            }),
        }
    }

    /// Tolerates clocks that differ by up to `leeway` (whole seconds) when checking `exp` and
    /// `nbf`; streams then end `leeway` after `exp`. Default: none.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        Arc::make_mut(&mut self.inner).leeway = Duration::from_secs(leeway.as_secs());
        self
    }

    /// Requires the `iss` claim to be `issuer`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        let validation = &mut Arc::make_mut(&mut self.inner).validation;
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".to_owned());
        self
    }

    /// Requires the `aud` claim to name `audience`. Without this, tokens that carry an `aud`
    /// claim are refused, as they are meant for some other service.
    pub fn audience(mut self, audience: &str) -> Self {
        let validation = &mut Arc::make_mut(&mut self.inner).validation;
        validation.set_audience(&[audience]);
        validation.required_spec_claims.insert("aud".to_owned());
        self
    }

    /// Verifies the request's token, from any of the places a subscriber may send it (see
    /// [`bearer_token`](crate::auth::bearer_token)), and returns its claims.
    ///
    /// # Errors
    ///
    /// A `401` [`Denied`] when there is no token or it is not valid.
    pub fn claims(&self, request: &Parts) -> Result<Claims, Denied> {
        let token = bearer_token(request).ok_or_else(|| {
            Denied::unauthenticated(
                "no token: send Authorization: Bearer TOKEN, an access_token query parameter \
                 or an sse_token cookie",
            )
        })?;
        self.verify(&token)
    }

    /// Verifies `token` and returns its claims.
    ///
    /// # Errors
    ///
    /// A `401` [`Denied`] when the token is not valid.
    pub fn verify(&self, token: &str) -> Result<Claims, Denied> {
        let inner = &*self.inner;
        let data = jsonwebtoken::decode::<RawClaims>(token, &inner.key, &inner.validation)
            .map_err(|e| Denied::invalid_token(token_problem(e.kind())))?;
        let raw = data.claims;
        let expires_at = validity(raw.exp, raw.nbf, validity::now(), inner.leeway.as_secs())
            .map_err(|invalid| Denied::invalid_token(invalid.message()))?;
        Ok(Claims {
            subject: raw.sub,
            expires_at: Some(expires_at),
            subscribe: selectors("subscribe", raw.subscribe)?,
            publish: selectors("publish", raw.publish)?,
        })
    }

    /// The claims of the token in the request's `Authorization` header, the only place a
    /// publish may send it.
    fn publish_claims(&self, request: &Parts) -> Result<Claims, Denied> {
        match header_token(request) {
            Some(token) => self.verify(token),
            None if bearer_token(request).is_some() => Err(Denied::unauthenticated(
                "publishing takes the token from the Authorization header only: send \
                 Authorization: Bearer TOKEN (a token in a cookie or the query, which a \
                 cross-site form could send, is not accepted for publishing)",
            )),
            None => Err(Denied::unauthenticated(
                "no token: send Authorization: Bearer TOKEN",
            )),
        }
    }
}

fn invalid_key(e: jsonwebtoken::errors::Error) -> InvalidKey {
    InvalidKey {
        message: e.to_string(),
    }
}

/// Why a token was refused, in words for the client (never the token itself).
fn token_problem(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "invalid token: it has expired",
        ErrorKind::ImmatureSignature => "invalid token: it is not valid yet",
        ErrorKind::InvalidSignature => "invalid token: the signature does not match",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "invalid token: its algorithm is not the one this server accepts"
        }
        ErrorKind::MissingRequiredClaim(_) => "invalid token: a required claim is missing",
        ErrorKind::InvalidIssuer => "invalid token: it was issued by someone else",
        ErrorKind::InvalidAudience => "invalid token: it is meant for another audience",
        ErrorKind::InvalidClaimFormat(_) => "invalid token: its claims are malformed",
        _ => "invalid token: it is malformed",
    }
}

/// The selectors of a claim; the first string that is not one refuses the token, naming it
/// (shortened, it is the client's text).
fn selectors(claim: &str, raw: Vec<String>) -> Result<Vec<Selector>, Denied> {
    raw.iter()
        .map(|s| {
            Selector::new(s).map_err(|e| {
                let shown: String = s.chars().take(64).collect();
                let more = if shown.len() < s.len() { "..." } else { "" };
                Denied::invalid_token(format!(
                    "invalid token: its {claim} claim holds {shown:?}{more}: {e}"
                ))
            })
        })
        .collect()
}

impl Authorize for JwtPolicy {
    type Subscribe = Ready<Result<Grant, Denied>>;
    type Publish = Ready<Result<(), Denied>>;

    fn subscribe(&self, request: &Parts, topics: &[Topic]) -> Self::Subscribe {
        ready(self.check_subscribe(request, topics))
    }

    fn publish(&self, request: &Parts, topic: &Topic) -> Self::Publish {
        ready(self.check_publish(request, topic))
    }
}

impl JwtPolicy {
    fn check_subscribe(&self, request: &Parts, topics: &[Topic]) -> Result<Grant, Denied> {
        let claims = self.claims(request)?;
        if let Some(topic) = topics.iter().find(|t| !claims.may_subscribe(t)) {
            return Err(Denied::forbidden(format!(
                "this token may not subscribe to topic {topic}"
            )));
        }
        Ok(match claims.expires_at {
            Some(at) => Grant::until(at),
            None => Grant::new(),
        })
    }

    fn check_publish(&self, request: &Parts, topic: &Topic) -> Result<(), Denied> {
        let claims = self.publish_claims(request)?;
        if !claims.may_publish(topic) {
            return Err(Denied::forbidden(format!(
                "this token may not publish to topic {topic}"
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for JwtPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtPolicy")
            .field("algorithm", &self.inner.algorithm)
            .field("leeway", &self.inner.leeway)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<NumericDate>,
    #[serde(default)]
    nbf: Option<NumericDate>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The verified claims of a token, from [`JwtPolicy::claims`].
#[derive(Debug, Clone)]
pub struct Claims {
    subject: Option<String>,
    expires_at: Option<SystemTime>,
    subscribe: Vec<Selector>,
    publish: Vec<Selector>,
}

impl Claims {
    /// The `sub` claim: who the token was issued to.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// When the token expires (its `exp`, plus the policy's leeway).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The selectors of the `subscribe` claim.
    pub fn subscribe(&self) -> &[Selector] {
        &self.subscribe
    }

    /// The selectors of the `publish` claim.
    pub fn publish(&self) -> &[Selector] {
        &self.publish
    }

    /// Whether the token allows subscribing to `topic`.
    pub fn may_subscribe(&self, topic: impl AsRef<str>) -> bool {
        self.subscribe.iter().any(|s| s.matches(topic.as_ref()))
    }

    /// Whether the token allows publishing to `topic`.
    pub fn may_publish(&self, topic: impl AsRef<str>) -> bool {
        self.publish.iter().any(|s| s.matches(topic.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"unit test secret, long enough for HS256";

    fn token(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn request(claims: &serde_json::Value) -> Parts {
        request_with(claims, "authorization", "Bearer ")
    }

    /// A request with the token in header `name`, after `before` (`Bearer `, `sse_token=`).
    fn request_with(claims: &serde_json::Value, name: &str, before: &str) -> Parts {
        let (parts, ()) = http::Request::get("/events/t")
            .header(name, format!("{before}{}", token(claims)))
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    fn in_an_hour() -> u64 {
        jsonwebtoken::get_current_timestamp() + 3600
    }

    #[test]
    fn claims_and_selectors() {
        let exp = in_an_hour();
        let policy = JwtPolicy::hs256(SECRET);
        let req = request(&json!({
            "sub": "u", "exp": exp, "subscribe": ["a:*", "b"], "publish": ["a:x"]
        }));
        let claims = policy.claims(&req).unwrap();
        assert_eq!(claims.subject(), Some("u"));
        assert_eq!(
            claims.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(exp))
        );
        assert_eq!(claims.subscribe().len(), 2);
        assert!(claims.may_subscribe("a:y") && claims.may_subscribe("b"));
        assert!(!claims.may_subscribe("c"));
        assert!(claims.may_publish("a:x") && !claims.may_publish("a:y"));

        let topics = [Topic::new("a:1").unwrap(), Topic::new("b").unwrap()];
        let grant = policy.check_subscribe(&req, &topics).unwrap();
        assert_eq!(grant.expires_at(), claims.expires_at());
        let denied = policy
            .check_subscribe(
                &req,
                &[Topic::new("a:1").unwrap(), Topic::new("c").unwrap()],
            )
            .unwrap_err();
        assert!(denied.is_forbidden() && denied.message().contains("topic c"));
        assert!(policy
            .check_publish(&req, &Topic::new("a:x").unwrap())
            .is_ok());
        assert!(policy
            .check_publish(&req, &Topic::new("a:y").unwrap())
            .unwrap_err()
            .is_forbidden());
    }

    #[test]
    fn a_claim_with_an_invalid_selector_refuses_the_token() {
        let policy = JwtPolicy::hs256(SECRET);
        for (claims, named) in [
            (
                json!({"exp": in_an_hour(), "subscribe": ["a:*", "org1*"]}),
                "\"org1*\"",
            ),
            (
                json!({"exp": in_an_hour(), "publish": ["bad selector"]}),
                "\"bad selector\"",
            ),
            (
                json!({"exp": in_an_hour(), "subscribe": ["x".repeat(300)]}),
                &format!("{:?}...", "x".repeat(64)),
            ),
        ] {
            let denied = policy.claims(&request(&claims)).unwrap_err();
            assert!(denied.is_unauthenticated(), "{denied}");
            assert!(denied.message().contains(named), "{denied}");
        }
        let denied = policy
            .claims(&request(
                &json!({"exp": in_an_hour(), "subscribe": ["org1*"]}),
            ))
            .unwrap_err();
        assert!(denied.message().contains("write `org1:*`"), "{denied}");
    }

    #[test]
    fn publishing_reads_the_authorization_header_only() {
        let policy = JwtPolicy::hs256(SECRET);
        let claims = json!({"exp": in_an_hour(), "subscribe": ["t"], "publish": ["t"]});
        let topic = Topic::new("t").unwrap();
        let cookie = request_with(&claims, "cookie", "sse_token=");
        assert!(policy
            .check_subscribe(&cookie, std::slice::from_ref(&topic))
            .is_ok());
        let denied = policy.check_publish(&cookie, &topic).unwrap_err();
        assert!(denied.is_unauthenticated(), "{denied}");
        assert!(
            denied.message().contains("Authorization: Bearer"),
            "{denied}"
        );
        let (query, ()) = http::Request::post(format!("/p?access_token={}", token(&claims)))
            .body(())
            .unwrap()
            .into_parts();
        assert!(policy.claims(&query).is_ok());
        assert!(policy
            .check_publish(&query, &topic)
            .unwrap_err()
            .is_unauthenticated());
        assert!(policy.check_publish(&request(&claims), &topic).is_ok());
        let none = http::Request::post("/p").body(()).unwrap().into_parts().0;
        let denied = policy.check_publish(&none, &topic).unwrap_err();
        assert!(denied.message().starts_with("no token"), "{denied}");
    }

    #[test]
    fn times_in_checked_arithmetic() {
        let now = jsonwebtoken::get_current_timestamp();
        let lenient = JwtPolicy::hs256(SECRET).leeway(Duration::from_secs(u64::MAX / 2));
        for exp in [u64::MAX, u64::MAX - 1, u64::MAX / 2 + 1] {
            let denied = lenient
                .claims(&request(&json!({ "exp": exp })))
                .unwrap_err();
            assert!(denied.message().contains("exp claim"), "{exp}: {denied}");
        }
        let strict = JwtPolicy::hs256(SECRET);
        let denied = strict.claims(&request(&json!({ "exp": -1 }))).unwrap_err();
        assert!(denied.is_unauthenticated(), "{denied}");
        let denied = strict.claims(&request(&json!({}))).unwrap_err();
        assert!(denied.message().contains("no exp"), "{denied}");
        let early = request(&json!({ "exp": now + 3600, "nbf": now + 600 }));
        let denied = strict.claims(&early).unwrap_err();
        assert!(denied.message().contains("not valid yet"), "{denied}");
        assert!(JwtPolicy::hs256(SECRET)
            .leeway(Duration::from_secs(900))
            .claims(&early)
            .is_ok());
        let float = strict
            .claims(&request(&json!({ "exp": now as f64 + 100.75 })))
            .unwrap();
        assert_eq!(
            float.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(now + 100))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever numbers a validly signed token holds, the policy answers without panicking:
        /// claims whose stream ends at `exp + leeway`, or a `401`.
        #[test]
        fn any_signed_times(
            exp in prop_oneof![
                any::<u64>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                (u64::MAX - 100..=u64::MAX).prop_map(serde_json::Value::from),
            ],
            nbf in proptest::option::of(any::<u64>()),
            leeway in prop_oneof![any::<u64>(), 0u64..1_000_000],
        ) {
            let before = jsonwebtoken::get_current_timestamp();
            let mut claims = json!({ "exp": exp, "subscribe": ["*"] });
            if let Some(nbf) = nbf {
                claims["nbf"] = nbf.into();
            }
            let policy = JwtPolicy::hs256(SECRET).leeway(Duration::from_secs(leeway));
            match policy.claims(&request(&claims)) {
                Ok(claims) => {
                    prop_assert!(exp.as_f64().unwrap() >= 0.0);
                    let exp = exp.as_u64().map_or_else(|| exp.as_f64().unwrap() as u128, u128::from);
                    let end = claims.expires_at().unwrap().duration_since(UNIX_EPOCH).unwrap();
                    prop_assert_eq!(u128::from(end.as_secs()), exp + u128::from(leeway));
                    prop_assert!(end.as_secs() > before);
                }
                Err(denied) => prop_assert!(denied.is_unauthenticated(), "{}", denied),
            }
        }
    }

    #[test]
    fn leeway_issuer_and_audience() {
        let now = jsonwebtoken::get_current_timestamp();
        let just_expired = request(&json!({"exp": now - 5}));
        assert!(JwtPolicy::hs256(SECRET).claims(&just_expired).is_err());
        let lenient = JwtPolicy::hs256(SECRET).leeway(Duration::from_secs(30));
        let claims = lenient.claims(&just_expired).unwrap();
        // The stream still ends when the leeway is over.
        assert_eq!(
            claims.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(now + 25))
        );

        let exp = in_an_hour();
        let with_aud = request(&json!({"exp": exp, "aud": "events", "iss": "me"}));
        let plain = request(&json!({"exp": exp}));
        // A token for some audience is not for a policy that names none.
        assert!(JwtPolicy::hs256(SECRET).claims(&with_aud).is_err());
        let strict = JwtPolicy::hs256(SECRET).audience("events").issuer("me");
        assert!(strict.claims(&with_aud).is_ok());
        assert!(strict.claims(&plain).unwrap_err().is_unauthenticated());
        let other = JwtPolicy::hs256(SECRET).audience("events").issuer("you");
        let denied = other.claims(&with_aud).unwrap_err();
        assert!(
            denied.message().contains("issued by someone else"),
            "{denied}"
        );
    }
}
