//! One forwarded request and its branches (RFC 3261 §16.7): which branches are still
//! pending, the best final response so far, and the caller to answer.

use std::sync::Arc;
use std::time::Instant;

use sipcraft_ipc::wire::CallRecord;
use sipcraft_sip::transaction::{ClientKey, ServerKey};

use crate::transport::Target;

/// State of one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchState {
    /// Request sent, nothing back yet.
    Trying,
    /// A provisional response came back: a CANCEL may be sent.
    Proceeding,
    /// A final response came back (or the branch failed).
    Done(u16),
}

/// One forwarded copy of the request.
#[derive(Debug, Clone)]
pub struct Branch {
    pub key: ClientKey,
    pub target: Target,
    /// The request as forwarded (for CANCEL and ACK).
    pub request: Arc<[u8]>,
    pub state: BranchState,
    pub cancelled: bool,
}

/// A request being proxied.
#[derive(Debug)]
pub struct Fork {
    pub server_key: ServerKey,
    pub method: String,
    /// The received request, Via annotated with received/rport (for building responses).
    pub request: Vec<u8>,
    /// Where responses to the caller go.
    pub caller: Target,
    pub branches: Vec<Branch>,
    /// Targets not tried yet, as a stack: the next group to try is last (serial forking
    /// by q-value).
    pub later: Vec<Vec<super::Hop>>,
    /// Best final non-2xx response so far: (status, response bytes with our Via removed).
    pub best: Option<(u16, Vec<u8>)>,
    /// A 2xx or 6xx was forwarded, or a final response was sent by us.
    pub finished: bool,
    pub answered: bool,
    /// Timer C (INVITE only): give up ringing at this time.
    pub timer_c: Option<Instant>,
    /// The call attempt, for an initial INVITE.
    pub record: Option<CallRecord>,
    /// A finished fork is kept until then for retransmitted 2xx responses.
    pub forget_at: Option<Instant>,
}

impl Fork {
    /// A fork with no branch yet, nothing planned and no timers.
    pub fn new(server_key: ServerKey, method: &str, request: Vec<u8>, caller: Target) -> Self {
        Fork {
            server_key,
            method: method.to_owned(),
            request,
            caller,
            branches: Vec::new(),
            later: Vec::new(),
            best: None,
            finished: false,
            answered: false,
            timer_c: None,
            record: None,
            forget_at: None,
        }
    }

    /// Whether every branch has a final response.
    pub fn all_done(&self) -> bool {
        self.branches
            .iter()
            .all(|b| matches!(b.state, BranchState::Done(_)))
    }

    /// Records a final non-2xx response if it beats the best so far (§16.7 step 6: 6xx
    /// wins; otherwise the lowest class; 503 is turned into 500 when it is forwarded).
    pub fn offer(&mut self, status: u16, response: Vec<u8>) {
        let rank = |s: u16| -> (u16, u16) {
            match s / 100 {
                6 => (0, s),
                3 => (1, s),
                4 => (2, s),
                5 => (3, s),
                _ => (4, s),
            }
        };
        let better = match &self.best {
            None => true,
            Some((old, _)) => rank(status) < rank(*old),
        };
        if better {
            self.best = Some((status, response));
        }
    }
}

/// Branch ids name the worker that holds the client transaction, so a response that
/// reaches another worker is handed to this one: `z9hG4bK.<worker>.<n>`.
pub fn branch_id(worker: &str, n: u64) -> String {
    format!("z9hG4bK.{worker}.{n:x}")
}

/// The worker named in one of our branch ids.
pub fn branch_owner(branch: &str) -> Option<&str> {
    let rest = branch.strip_prefix("z9hG4bK.")?;
    let (worker, _) = rest.split_once('.')?;
    (!worker.is_empty()).then_some(worker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_ids_name_their_worker() {
        let b = branch_id("udp-1", 255);
        assert_eq!(b, "z9hG4bK.udp-1.ff");
        assert_eq!(branch_owner(&b), Some("udp-1"));
        assert_eq!(branch_owner("z9hG4bK776asdhds"), None);
        assert_eq!(branch_owner("z9hG4bK..1"), None);
    }
}

#[cfg(test)]
mod choice {
    use super::*;

    fn fork() -> Fork {
        let key = ServerKey::new("z9hG4bKx", "127.0.0.1:4000", "INVITE").unwrap();
        Fork::new(
            key,
            "INVITE",
            Vec::new(),
            Target::udp("127.0.0.1:4000".parse().unwrap()),
        )
    }

    #[test]
    fn best_final_response_follows_rfc3261_16_7() {
        let mut f = fork();
        f.offer(503, b"503".to_vec());
        f.offer(486, b"486".to_vec());
        assert_eq!(f.best.as_ref().unwrap().0, 486, "4xx beats 5xx");
        f.offer(302, b"302".to_vec());
        assert_eq!(f.best.as_ref().unwrap().0, 302, "3xx beats 4xx");
        f.offer(603, b"603".to_vec());
        assert_eq!(f.best.as_ref().unwrap().0, 603, "6xx beats everything");
        f.offer(404, b"404".to_vec());
        assert_eq!(f.best.as_ref().unwrap().0, 603);
    }
}
