//! Globalnet's slice records in the directory broker: one claim file per
//! slice, `PATH/globalnet/<a>-<b>-<c>-<d>-<prefix>.yaml`, holding one entry
//! of Submariner's `submariner-globalnet-info` `clusterinfo` list:
//! `{cluster_id, global_cidr: [CIDR]}`. The file name is the claim: a
//! file whose content does not parse still keeps its slice taken.
//!
//! A claim is a complete temporary file hard-linked to its name: link(2)
//! fails when the name exists, so of two clusters racing for one slice
//! exactly one gets it (the other picks again), and no reader ever sees a
//! half-written claim.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::plan::globalnet::{allocate_slice, AllocError};

/// The broker directory's subdirectory of claims.
pub const DIR: &str = "globalnet";
/// How often a cluster picks again after losing a race before giving up.
const ATTEMPTS: usize = 64;

/// One element of Submariner's `clusterinfo` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub global_cidr: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("allocating a global CIDR: {0}")]
    Alloc(#[from] AllocError),
    #[error("allocating a global CIDR: lost the race for a free slice {ATTEMPTS} times in a row")]
    Contended,
}

fn file_name(slice: Ipv4Net) -> String {
    let [a, b, c, d] = slice.network().octets();
    format!("{a}-{b}-{c}-{d}-{}.yaml", slice.prefix_len())
}

fn slice_of(file: &str) -> Option<Ipv4Net> {
    let parts: Vec<u8> = file
        .strip_suffix(".yaml")?
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, prefix] = parts[..] else {
        return None;
    };
    Ipv4Net::new(std::net::Ipv4Addr::new(a, b, c, d), prefix).ok()
}

/// Every claim: the slice (from the file name) and its owner, when the
/// file says one.
pub fn claims(root: &Path) -> Result<Vec<(Ipv4Net, Option<String>)>, ClaimError> {
    let dir = root.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ClaimError::Io {
                op: "listing",
                path: dir,
                source,
            })
        }
    };
    let mut claims = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(slice) = name.to_str().and_then(slice_of) else {
            continue;
        };
        let owner = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|text| serde_yaml::from_str::<ClusterInfo>(&text).ok())
            .map(|info| info.cluster_id);
        claims.push((slice, owner));
    }
    claims.sort();
    Ok(claims)
}

/// The slice of `range` this cluster holds, or a newly claimed one: the
/// lowest free slice of `size` addresses.
pub fn claim_slice(
    root: &Path,
    cluster_id: &str,
    range: Ipv4Net,
    size: u32,
) -> Result<Ipv4Net, ClaimError> {
    let dir = root.join(DIR);
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| ClaimError::Io { op, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    for _ in 0..ATTEMPTS {
        let claims = claims(root)?;
        let ours = claims.iter().find(|(slice, owner)| {
            owner.as_deref() == Some(cluster_id) && range.contains(&slice.network())
        });
        if let Some((slice, _)) = ours {
            return Ok(*slice);
        }
        let taken: Vec<Ipv4Net> = claims.iter().map(|(slice, _)| *slice).collect();
        let slice = allocate_slice(range, size, &taken)?;
        let info = ClusterInfo {
            cluster_id: cluster_id.to_string(),
            global_cidr: vec![slice.to_string()],
        };
        let text = serde_yaml::to_string(&info).expect("a claim serializes");
        let temp = dir.join(format!(
            ".claim-{cluster_id}-{}-{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&temp, text).map_err(io("writing", &temp))?;
        let path = dir.join(file_name(slice));
        let linked = std::fs::hard_link(&temp, &path);
        std::fs::remove_file(&temp).map_err(io("removing", &temp))?;
        match linked {
            Ok(()) => return Ok(slice),
            // Another cluster was quicker: pick again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(ClaimError::Io {
                    op: "claiming",
                    path,
                    source,
                })
            }
        }
    }
    Err(ClaimError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Barrier};

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("strait-globalnet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn range() -> Ipv4Net {
        "242.0.0.0/8".parse().unwrap()
    }

    #[test]
    fn clusters_racing_for_slices_never_share_one() {
        let root = scratch("race");
        let clusters = 16;
        let barrier = Arc::new(Barrier::new(clusters));
        let threads: Vec<_> = (0..clusters)
            .map(|i| {
                let (root, barrier) = (root.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    claim_slice(&root, &format!("c{i}"), range(), 65_536).unwrap()
                })
            })
            .collect();
        let slices: BTreeSet<Ipv4Net> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(slices.len(), clusters, "{slices:?}");
        // The lowest ones, each recorded once with its owner.
        let expected: BTreeSet<Ipv4Net> = (0..clusters as u8)
            .map(|i| format!("242.{i}.0.0/16").parse().unwrap())
            .collect();
        assert_eq!(slices, expected);
        let owners: BTreeSet<String> = claims(&root)
            .unwrap()
            .into_iter()
            .map(|(_, owner)| owner.unwrap())
            .collect();
        assert_eq!(owners.len(), clusters);
        let leftovers = std::fs::read_dir(root.join(DIR))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0, "temporary files left behind");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_cluster_keeps_its_slice_and_a_malformed_claim_keeps_its_own() {
        let root = scratch("keep");
        std::fs::create_dir_all(root.join(DIR)).unwrap();
        std::fs::write(root.join(DIR).join("242-0-0-0-16.yaml"), "{ garbage").unwrap();
        let a = claim_slice(&root, "a", range(), 65_536).unwrap();
        assert_eq!(a.to_string(), "242.1.0.0/16");
        assert_eq!(claim_slice(&root, "a", range(), 65_536).unwrap(), a);
        let b = claim_slice(&root, "b", range(), 65_536).unwrap();
        assert_eq!(b.to_string(), "242.2.0.0/16");
        let text = std::fs::read_to_string(root.join(DIR).join("242-2-0-0-16.yaml")).unwrap();
        let info: ClusterInfo = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            info,
            ClusterInfo {
                cluster_id: "b".into(),
                global_cidr: vec!["242.2.0.0/16".into()]
            }
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_exhausted_range_is_an_error() {
        let root = scratch("full");
        let small: Ipv4Net = "242.0.0.0/23".parse().unwrap();
        claim_slice(&root, "a", small, 256).unwrap();
        claim_slice(&root, "b", small, 256).unwrap();
        let err = claim_slice(&root, "c", small, 256).unwrap_err();
        assert!(
            matches!(err, ClaimError::Alloc(AllocError::RangeExhausted { .. })),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
