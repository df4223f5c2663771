//! The broker-info file (`broker-info.subm`) in Submariner's format, so
//! that a file written by `subctl deploy-broker` joins a Strait cluster and
//! the other way round: URL-safe base64 (with padding) of a JSON object.
//!
//! Submariner's Go struct tags are malformed (`omitempty,json:"..."`), so Go
//! writes the field names themselves (`ClientToken`, `IPSecPSK`, ...); Go
//! reads keys case-insensitively, which the aliases below follow.

use std::collections::BTreeMap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};

/// Keys of the `ClientToken` secret's data.
pub const CA_KEY: &str = "ca.crt";
pub const NAMESPACE_KEY: &str = "namespace";
pub const TOKEN_KEY: &str = "token";
/// The key of the `IPSecPSK` secret's data.
pub const PSK_KEY: &str = "psk";
/// The name Submariner gives the PSK secret.
pub const PSK_SECRET_NAME: &str = "submariner-ipsec-psk";
/// Submariner's components; its `deploy-broker` enables these two.
pub const COMPONENT_SERVICE_DISCOVERY: &str = "service-discovery";
pub const COMPONENT_CONNECTIVITY: &str = "connectivity";
pub const COMPONENT_GLOBALNET: &str = "globalnet";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    #[serde(rename = "brokerURL", alias = "brokerUrl", alias = "BrokerURL")]
    pub broker_url: String,
    #[serde(rename = "ClientToken", alias = "clientToken", default)]
    pub client_token: Option<Secret>,
    #[serde(rename = "IPSecPSK", alias = "ipsecPSK", default)]
    pub ipsec_psk: Option<Secret>,
    #[serde(rename = "ServiceDiscovery", alias = "serviceDiscovery", default)]
    pub service_discovery: bool,
    #[serde(
        rename = "Components",
        alias = "components",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub components: Vec<String>,
    /// Go writes its nil pointer as `null`: so do we.
    #[serde(rename = "CustomDomains", alias = "customDomains", default)]
    pub custom_domains: Option<Vec<String>>,
}

/// What a broker-info file must hold for `join`, checked before anything
/// is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAccess {
    pub url: String,
    /// PEM; empty when the broker's certificate is publicly trusted.
    pub ca_pem: String,
    pub namespace: String,
    pub token: String,
    /// The cluster set's pre-shared key, raw bytes (Submariner's are 48
    /// random bytes, not text).
    pub psk: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerInfoError {
    #[error("is not a broker-info file: not base64 ({0})")]
    Base64(String),
    #[error("is not a broker-info file: not its JSON ({0})")]
    Json(String),
    #[error("has no {0}")]
    Missing(&'static str),
    #[error("has a brokerURL that is not https://: {0:?}")]
    Url(String),
}

impl BrokerInfo {
    /// A broker-info for the broker at `access`, with Submariner's default
    /// components (and globalnet's when it is on).
    pub fn new(access: &BrokerAccess, token_secret_name: &str, globalnet: bool) -> BrokerInfo {
        let mut components = vec![
            COMPONENT_SERVICE_DISCOVERY.to_string(),
            COMPONENT_CONNECTIVITY.to_string(),
        ];
        if globalnet {
            components.push(COMPONENT_GLOBALNET.to_string());
        }
        let mut token_data = BTreeMap::from([
            (NAMESPACE_KEY.to_string(), bytes(&access.namespace)),
            (TOKEN_KEY.to_string(), bytes(&access.token)),
        ]);
        if !access.ca_pem.is_empty() {
            token_data.insert(CA_KEY.to_string(), bytes(&access.ca_pem));
        }
        BrokerInfo {
            broker_url: access.url.clone(),
            client_token: Some(secret(
                token_secret_name,
                Some("kubernetes.io/service-account-token"),
                token_data,
            )),
            ipsec_psk: Some(secret(
                PSK_SECRET_NAME,
                None,
                BTreeMap::from([(PSK_KEY.to_string(), ByteString(access.psk.clone()))]),
            )),
            service_discovery: true,
            components,
            custom_domains: None,
        }
    }

    /// The file's content.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("broker info serializes");
        URL_SAFE.encode(json)
    }

    /// Parses a file's content; surrounding whitespace is ignored, and
    /// standard base64 is taken too (hand-made files).
    pub fn decode(text: &str) -> Result<BrokerInfo, BrokerInfoError> {
        let text = text.trim();
        let json = URL_SAFE
            .decode(text)
            .or_else(|_| STANDARD.decode(text))
            .map_err(|e| BrokerInfoError::Base64(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| BrokerInfoError::Json(e.to_string()))
    }

    /// What `join` needs, or the first thing missing.
    pub fn access(&self) -> Result<BrokerAccess, BrokerInfoError> {
        if self.broker_url.is_empty() {
            return Err(BrokerInfoError::Missing("brokerURL"));
        }
        let url = if self.broker_url.contains("://") {
            self.broker_url.clone()
        } else {
            // subctl writes host:port when the kubeconfig has no scheme.
            format!("https://{}", self.broker_url)
        };
        if !url.starts_with("https://") {
            return Err(BrokerInfoError::Url(self.broker_url.clone()));
        }
        let token = self
            .client_token
            .as_ref()
            .ok_or(BrokerInfoError::Missing("ClientToken"))?;
        let psk = self
            .ipsec_psk
            .as_ref()
            .ok_or(BrokerInfoError::Missing("IPSecPSK"))?;
        let access = BrokerAccess {
            url,
            ca_pem: text_of(token, CA_KEY).unwrap_or_default(),
            namespace: text_of(token, NAMESPACE_KEY)
                .filter(|n| !n.is_empty())
                .ok_or(BrokerInfoError::Missing("ClientToken data namespace"))?,
            token: text_of(token, TOKEN_KEY)
                .filter(|t| !t.is_empty())
                .ok_or(BrokerInfoError::Missing("ClientToken data token"))?,
            psk: data_of(psk, PSK_KEY)
                .filter(|p| !p.is_empty())
                .ok_or(BrokerInfoError::Missing("IPSecPSK data psk"))?
                .to_vec(),
        };
        Ok(access)
    }

    pub fn globalnet(&self) -> bool {
        self.components.iter().any(|c| c == COMPONENT_GLOBALNET)
    }
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

fn secret(name: &str, type_: Option<&str>, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        type_: type_.map(String::from),
        data: Some(data),
        ..Default::default()
    }
}

fn data_of<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
}

fn text_of(secret: &Secret, key: &str) -> Option<String> {
    data_of(secret, key).map(|b| String::from_utf8_lossy(b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> BrokerAccess {
        BrokerAccess {
            url: "https://192.0.2.10:6443".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            namespace: "submariner-k8s-broker".into(),
            token: "eyJhbGciOi.token".into(),
            psk: vec![0, 1, 2, 255, 254],
        }
    }

    #[test]
    fn encodes_to_submariners_shape_and_back() {
        let info = BrokerInfo::new(&access(), "submariner-k8s-broker-admin-token", false);
        let text = info.encode();
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE.decode(&text).unwrap()).unwrap();
        assert_eq!(json["brokerURL"], "https://192.0.2.10:6443");
        assert_eq!(json["ClientToken"]["apiVersion"], "v1");
        assert_eq!(json["ClientToken"]["kind"], "Secret");
        assert_eq!(
            json["ClientToken"]["data"]["namespace"],
            STANDARD.encode("submariner-k8s-broker")
        );
        assert_eq!(
            json["ClientToken"]["data"]["token"],
            STANDARD.encode("eyJhbGciOi.token")
        );
        assert!(json["ClientToken"]["data"]["ca.crt"].is_string());
        assert_eq!(
            json["IPSecPSK"]["data"]["psk"],
            STANDARD.encode([0, 1, 2, 255, 254])
        );
        assert_eq!(json["IPSecPSK"]["metadata"]["name"], PSK_SECRET_NAME);
        assert_eq!(json["ServiceDiscovery"], true);
        assert_eq!(
            json["Components"],
            serde_json::json!(["service-discovery", "connectivity"])
        );
        assert!(json["CustomDomains"].is_null());
        let back = BrokerInfo::decode(&format!("{text}\n")).unwrap();
        assert_eq!(back, info);
        assert_eq!(back.access().unwrap(), access());
        assert!(!back.globalnet());
        assert!(BrokerInfo::new(&access(), "t", true).globalnet());
    }

    /// A file as subctl writes it: Go's typed Secrets carry no apiVersion
    /// or kind and a null creationTimestamp.
    #[test]
    fn decodes_a_subctl_file() {
        let json = serde_json::json!({
            "brokerURL": "192.0.2.10:6443",
            "ClientToken": {
                "metadata": { "name": "submariner-k8s-broker-admin-token-x", "creationTimestamp": null },
                "data": {
                    "ca.crt": STANDARD.encode("PEM"),
                    "namespace": STANDARD.encode("submariner-k8s-broker"),
                    "token": STANDARD.encode("tok"),
                },
                "type": "kubernetes.io/service-account-token"
            },
            "IPSecPSK": {
                "metadata": { "name": "submariner-ipsec-psk", "creationTimestamp": null },
                "data": { "psk": STANDARD.encode([9u8; 48]) }
            },
            "ServiceDiscovery": true,
            "Components": ["service-discovery", "connectivity", "globalnet"],
            "CustomDomains": null
        });
        let text = URL_SAFE.encode(serde_json::to_vec(&json).unwrap());
        let info = BrokerInfo::decode(&text).unwrap();
        assert!(info.globalnet());
        let access = info.access().unwrap();
        assert_eq!(access.url, "https://192.0.2.10:6443");
        assert_eq!(access.namespace, "submariner-k8s-broker");
        assert_eq!(access.token, "tok");
        assert_eq!(access.ca_pem, "PEM");
        assert_eq!(access.psk, vec![9u8; 48]);
    }

    #[test]
    fn garbage_and_incomplete_files_say_what_is_wrong() {
        assert!(matches!(
            BrokerInfo::decode("not base64 at all!"),
            Err(BrokerInfoError::Base64(_))
        ));
        assert!(matches!(
            BrokerInfo::decode(&URL_SAFE.encode("{\"brokerURL\": 3}")),
            Err(BrokerInfoError::Json(_))
        ));
        let mut info = BrokerInfo::new(&access(), "t", false);
        info.ipsec_psk = None;
        assert_eq!(info.access(), Err(BrokerInfoError::Missing("IPSecPSK")));
        let mut info = BrokerInfo::new(&access(), "t", false);
        info.client_token
            .as_mut()
            .unwrap()
            .data
            .as_mut()
            .unwrap()
            .remove(TOKEN_KEY);
        assert_eq!(
            info.access(),
            Err(BrokerInfoError::Missing("ClientToken data token"))
        );
        let mut info = BrokerInfo::new(&access(), "t", false);
        info.broker_url = "http://192.0.2.10".into();
        assert!(matches!(info.access(), Err(BrokerInfoError::Url(_))));
    }
}
