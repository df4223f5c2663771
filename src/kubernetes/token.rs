//! Service-account tokens from the TokenRequest API: long-lived, since
//! clusters without kube-controller-manager never fill legacy token
//! Secrets, and newer ones no longer create them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use super::SetupError;

/// A token and until when (as the API server decided: it may cap the
/// duration asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub expires: String,
}

/// A new token of `namespace/account`, valid for `duration`.
pub async fn request(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    duration: Duration,
) -> Result<Token, SetupError> {
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        },
        ..Default::default()
    };
    let status = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(SetupError::api(format!(
            "requesting a token of ServiceAccount {namespace}/{account}"
        )))?
        .status
        .ok_or_else(|| SetupError::Refused("the API server returned no token".into()))?;
    Ok(Token {
        token: status.token,
        expires: status.expiration_timestamp.0.to_string(),
    })
}

/// The `exp` claim of a JWT, unverified: only to decide whether a token
/// we handed out earlier is worth keeping.
pub fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?)
            .ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(claims.get("exp")?.as_u64()?))
}

/// Whether `token` still has more than a tenth of `duration` to live.
pub fn fresh_enough(token: &str, duration: Duration, now: SystemTime) -> bool {
    expiry(token).is_some_and(|exp| exp > now + duration / 10)
}

/// The user name the API server behind `client` sees.
pub async fn whoami(client: &kube::Client) -> Result<String, SetupError> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(SetupError::api("asking the API server who we are"))?;
    Ok(review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode("{\"alg\":\"ES256\"}"),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn expiry_comes_from_the_claims() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token =
            jwt("{\"exp\":1086400,\"sub\":\"system:serviceaccount:b:strait-cluster-east\"}");
        assert_eq!(
            expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_086_400))
        );
        let day = Duration::from_secs(86_400);
        assert!(fresh_enough(&token, day, now));
        assert!(!fresh_enough(&token, day * 20, now));
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry(&jwt("{\"sub\":\"x\"}")), None);
        assert!(!fresh_enough("garbage", day, now));
    }
}
