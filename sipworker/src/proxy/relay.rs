//! What lets a worker relay the ringing of a call another worker holds (`Core::relay_early`)
//! without trusting the callee: the branch of a forwarded INVITE ends in a tag, an HMAC with
//! the instance secret every worker shares, over the branch and the caller's address. A
//! worker that reads a 180 on that branch relays it only to the address the tag was made
//! for, so neither a forged response nor a callee that rewrites the caller's Via can aim it
//! anywhere else. A branch without a valid tag is handed to its worker, as every response
//! used to be.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const LABEL: &[u8] = b"sipcraft early relay 1";
/// The tag's bytes (64 bits, 16 hex digits at the end of the branch).
const TAG_BYTES: usize = 8;

/// The key branch tags are made with. `Debug` never prints it.
#[derive(Clone)]
pub struct RelayKey(Option<Hmac<Sha256>>);

impl std::fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayKey(..)")
    }
}

impl RelayKey {
    /// A key from the instance secret; without a usable secret (shorter than 16 bytes)
    /// branches get no tag and nothing is relayed early.
    pub fn new(secret: &[u8]) -> Self {
        RelayKey(
            (secret.len() >= 16)
                .then(|| Hmac::<Sha256>::new_from_slice(secret).ok())
                .flatten(),
        )
    }

    fn mac(&self, head: &str, caller: SocketAddr) -> Option<Hmac<Sha256>> {
        let mut mac = self.0.clone()?;
        mac.update(LABEL);
        mac.update(head.as_bytes());
        match caller.ip() {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac.update(&caller.port().to_be_bytes());
        Some(mac)
    }

    /// `head` with the tag for a caller at `caller` appended (`head.<16 hex digits>`), or
    /// `head` as it is without a key.
    pub fn sign(&self, head: &str, caller: SocketAddr) -> String {
        match self.mac(head, caller) {
            Some(mac) => {
                let full = mac.finalize().into_bytes();
                format!("{head}.{}", hex::encode(&full[..TAG_BYTES]))
            }
            None => head.to_owned(),
        }
    }

    /// Whether `branch` ends in the tag for a caller at `caller`.
    pub fn verify(&self, branch: &str, caller: SocketAddr) -> bool {
        let Some((head, tag)) = branch.rsplit_once('.') else {
            return false;
        };
        let mut bytes = [0u8; TAG_BYTES];
        if tag.len() != 2 * TAG_BYTES || hex::decode_to_slice(tag, &mut bytes).is_err() {
            return false;
        }
        self.mac(head, caller)
            .is_some_and(|mac| mac.verify_truncated_left(&bytes).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_holds_for_its_branch_and_caller_only() {
        let key = RelayKey::new(&[7u8; 32]);
        let caller: SocketAddr = "192.0.2.10:5062".parse().unwrap();
        let branch = key.sign("z9hG4bK.udp-1.2a", caller);
        assert!(branch.starts_with("z9hG4bK.udp-1.2a."));
        assert_eq!(branch.len(), "z9hG4bK.udp-1.2a.".len() + 16);
        assert!(key.verify(&branch, caller));
        assert!(!key.verify(&branch, "192.0.2.10:5063".parse().unwrap()));
        assert!(!key.verify(&branch, "192.0.2.11:5062".parse().unwrap()));
        let other = key.sign("z9hG4bK.udp-1.2b", caller);
        let forged = format!("z9hG4bK.udp-1.2a.{}", other.rsplit_once('.').unwrap().1);
        assert!(
            !key.verify(&forged, caller),
            "a tag moved to another branch"
        );
        assert!(
            !RelayKey::new(&[8u8; 32]).verify(&branch, caller),
            "another instance's key"
        );
        assert!(!key.verify("z9hG4bK.udp-1.2a", caller));
        assert!(!key.verify("z9hG4bK.udp-1.2a.zzzzzzzzzzzzzzzz", caller));
    }

    #[test]
    fn without_a_usable_secret_branches_are_untagged() {
        let key = RelayKey::new(b"short");
        let caller: SocketAddr = "192.0.2.10:5062".parse().unwrap();
        assert_eq!(key.sign("z9hG4bK.udp-0.1", caller), "z9hG4bK.udp-0.1");
        assert!(!key.verify("z9hG4bK.udp-0.1.0011223344556677", caller));
    }
}
