//! Setting up clusters in Kubernetes mode: `deploy-broker` (a broker
//! namespace on one API server) and `join` (a cluster's account on the
//! broker, and Strait installed into the cluster). The CLI files only parse
//! flags and print.
//!
//! Errors carry their cause in their message and not as a `source`, so
//! that `strait: {e:#}` says each thing once.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

pub mod apply;
pub mod broker_info;
pub mod deploy_broker;
pub mod globalnet_info;
pub mod join;
pub mod manifests;
pub mod networks;
pub mod rbac;
pub mod token;

use broker_info::BrokerInfoError;

/// The field manager of every server-side apply Strait makes.
pub const FIELD_MANAGER: &str = "strait";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading kubeconfig {path}: {error}")]
    Kubeconfig {
        path: PathBuf,
        error: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes client configuration (give --kubeconfig): {0}")]
    Infer(kube::config::InferConfigError),
    /// The API server's own message only: kube's error repeats it.
    #[error("{op}: {}", api_message(error))]
    Api { op: String, error: kube::Error },
    #[error("broker-info file {path} {error}")]
    BrokerInfo {
        path: PathBuf,
        error: BrokerInfoError,
    },
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// `join` will not go on: nothing has been created.
    #[error("{0}")]
    Refused(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl SetupError {
    pub fn api(op: impl Into<String>) -> impl FnOnce(kube::Error) -> SetupError {
        let op = op.into();
        move |error| SetupError::Api { op, error }
    }
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} (HTTP {})", status.message, status.code),
        other => other.to_string(),
    }
}

/// A client of one API server, and what it was made from.
pub struct Connection {
    pub client: kube::Client,
    /// The server's URL as the kubeconfig has it.
    pub url: String,
    /// The CA that signs the server's certificate (PEM); empty when the
    /// system's roots are used.
    pub ca_pem: String,
}

/// Connects with `kubeconfig`, or with what `KUBECONFIG`, `~/.kube/config`
/// or the in-cluster service account give.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Connection, SetupError> {
    let config = match kubeconfig {
        Some(path) => {
            let invalid = |error| SetupError::Kubeconfig {
                path: path.into(),
                error,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(invalid)?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(invalid)?
        }
        None => kube::Config::infer().await.map_err(SetupError::Infer)?,
    };
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let ca_pem = match (&config.root_cert, &config.root_cert_file) {
        (Some(ders), _) => ders.iter().map(|der| pem_certificate(der)).collect(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|error| SetupError::Io {
            op: "reading",
            path: path.clone(),
            error,
        })?,
        (None, None) => String::new(),
    };
    let client = kube::Client::try_from(config).map_err(SetupError::api("building a client"))?;
    Ok(Connection {
        client,
        url,
        ca_pem,
    })
}

/// A kube client of the broker from a broker-info's access.
pub fn broker_client(access: &broker_info::BrokerAccess) -> Result<kube::Client, SetupError> {
    let url = access.url.parse().map_err(|_| {
        SetupError::Refused(format!("the broker URL {:?} does not parse", access.url))
    })?;
    let mut config = kube::Config::new(url);
    config.default_namespace = access.namespace.clone();
    if !access.ca_pem.is_empty() {
        config.root_cert = Some(der_certificates(&access.ca_pem));
    }
    config.auth_info.token = Some(access.token.clone().into());
    kube::Client::try_from(config).map_err(SetupError::api("building a broker client"))
}

/// A DER certificate as PEM.
fn pem_certificate(der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// The DER certificates of a PEM bundle; what is not a certificate is
/// skipped.
fn der_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut ders = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match line {
            "-----BEGIN CERTIFICATE-----" => body = Some(String::new()),
            "-----END CERTIFICATE-----" => {
                if let Some(der) = body.take().and_then(|b| BASE64.decode(b).ok()) {
                    ders.push(der);
                }
            }
            _ => {
                if let Some(b) = body.as_mut() {
                    b.push_str(line);
                }
            }
        }
    }
    ders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_round_trip_between_der_and_pem() {
        let der: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let pem = pem_certificate(&der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let bundle = format!("{pem}junk\n{}", pem_certificate(b"second"));
        assert_eq!(der_certificates(&bundle), vec![der, b"second".to_vec()]);
    }
}
