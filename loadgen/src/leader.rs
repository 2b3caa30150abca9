//! Following the leader of a replicated switch (`--server` naming several nodes). Only the
//! leader serves; a follower refuses every call UNAVAILABLE `REASON_NOT_LEADER` naming the
//! leader's address, and a leader that dies takes its connections with it. Loadgen keeps one
//! idea of who leads (`Leader`): every connection it makes follows it (a channel whose one
//! endpoint is replaced when the leader changes, so the callers' clients, the payee simulators'
//! event streams and the operator's calls all move without being rebuilt), and an operation
//! whose outcome is in doubt is sent again, with the same id, once a leader answers (the switch
//! never pays the same id twice). Each change of leader is recorded as a failover: when the
//! old one was first found gone, when a new one answered, how many operations were resent, and
//! the gap with no completed operation around it (for the report's chart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use switch::proto::operator_service_client::OperatorServiceClient;
use switch::proto::{self, Reason};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// How long an operation in doubt keeps being resent before it counts as unanswered: several
/// elections' worth (an election here takes about three seconds, BENCHMARKS.md).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// Pause between two rounds of asking every node who leads.
const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// One probe's bound: a dead node's connection attempt must not hold up asking the next one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Makes the endpoint to ask a node (an address) who leads.
pub type ProbeFn = dyn Fn(&str) -> anyhow::Result<Endpoint> + Send + Sync;
pub type Probe = Arc<ProbeFn>;

/// One change of leader, as loadgen saw it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Failover {
    /// Seconds from the measured phase's start to when a call first failed for want of a leader.
    pub lost_at_s: f64,
    /// Seconds from then until a node answered as leader.
    pub found_after_s: f64,
    /// The leader before and after (https:// addresses).
    pub from: String,
    pub to: String,
    /// Operations whose outcome was in doubt and were sent again to the new leader.
    pub resent: u64,
    /// The longest stretch without a completed operation around this failover, seconds (filled
    /// in from the run's completions when it ends).
    pub gap_s: f64,
}

/// Who leads, as far as loadgen knows, and how to find out again.
pub struct Leader {
    /// Every node's gRPC address, as given.
    nodes: Vec<String>,
    /// The current leader's address; connections follow its changes.
    current: watch::Sender<String>,
    /// Bumped at each change: a caller that saw a failure under generation g asks for a new
    /// leader only if nobody has found one since.
    generation: AtomicU64,
    /// One search at a time; the others wait for its result.
    searching: tokio::sync::Mutex<()>,
    /// How to connect to a node to ask it (the operator's identity).
    probe: Probe,
    /// Where times in `failovers` are measured from (the measured phase's start, once set).
    epoch: Mutex<Instant>,
    failovers: Mutex<Vec<Failover>>,
}

impl Leader {
    /// Finds the leader among `nodes` (following NOT_LEADER's `switch-leader`), waiting up to
    /// `FAILOVER_WAIT` for an election; `probe` makes an endpoint for an address.
    pub async fn find(nodes: Vec<String>, probe: Probe) -> anyhow::Result<Arc<Leader>> {
        let first = search(&nodes, probe.as_ref(), Instant::now() + FAILOVER_WAIT).await?;
        let (current, _) = watch::channel(first);
        Ok(Arc::new(Leader {
            nodes,
            current,
            generation: AtomicU64::new(0),
            searching: tokio::sync::Mutex::new(()),
            probe,
            epoch: Mutex::new(Instant::now()),
            failovers: Mutex::new(Vec::new()),
        }))
    }

    pub fn address(&self) -> String {
        self.current.borrow().clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Changes of the leader's address, for a connection to follow.
    pub fn watch(&self) -> watch::Receiver<String> {
        self.current.subscribe()
    }

    /// Times in the failover records count from now (the measured phase's start).
    pub fn set_epoch(&self, start: Instant) {
        *self.epoch.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = start;
    }

    /// A call made under `generation` failed for want of a leader: unless someone already found
    /// a new one since, search (one search at a time; the others wait for it). Returns when a
    /// leader answered, or with an error once `FAILOVER_WAIT` passed without one.
    pub async fn lost(&self, generation: u64) -> anyhow::Result<()> {
        let failed_at = Instant::now();
        let _searching = self.searching.lock().await;
        if self.generation() != generation {
            return Ok(()); // found while this caller waited for the search
        }
        let found = search(&self.nodes, self.probe.as_ref(), failed_at + FAILOVER_WAIT).await?;
        let epoch = *self.epoch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let from = self.address();
        self.failovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Failover {
            lost_at_s: failed_at.saturating_duration_since(epoch).as_secs_f64(),
            found_after_s: failed_at.elapsed().as_secs_f64(),
            from,
            to: found.clone(),
            resent: 0,
            gap_s: 0.0,
        });
        // The same node leading again (re-elected, or it only refused while its lease was in
        // doubt): the connections stay; tonic reconnects a broken one by itself.
        if found != self.address() {
            self.current.send_replace(found);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// An operation in doubt is being sent again (charged to the last failover).
    pub fn resending(&self) {
        if let Some(last) = self.failovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).last_mut() {
            last.resent += 1;
        }
    }

    /// The failovers so far.
    pub fn failovers(&self) -> Vec<Failover> {
        self.failovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Whether a call's outcome is unknown for a reason a change of leader explains: UNAVAILABLE
/// (a follower, no leader, the ledger's outcome unknown, a connection gone), the connection
/// broken mid-call (CANCELLED, UNKNOWN), or loadgen's own deadline on a leader that went silent.
/// Every such call may be sent again with the same id (errors.proto: "retry with the SAME id").
/// RESOURCE_EXHAUSTED is not: it is a refusal that changed nothing, counted as shed.
pub fn in_doubt(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded => true,
        // An HTTP/2 connection torn down mid-call surfaces as INTERNAL without a reason code.
        Code::Internal => switch::reason::reason_of(status).is_none(),
        _ => false,
    }
}

/// Asks every node in turn who leads, until one answers as leader or `deadline` passes. A
/// follower's NOT_LEADER names the leader: that address is asked next (it may be one not in
/// `nodes`, e.g. a replaced machine).
async fn search(nodes: &[String], probe: &ProbeFn, deadline: Instant) -> anyhow::Result<String> {
    let mut last_error = String::from("no node was asked");
    loop {
        let mut queue: std::collections::VecDeque<String> = nodes.iter().cloned().collect();
        let mut asked = std::collections::HashSet::new();
        while let Some(node) = queue.pop_front() {
            if !asked.insert(node.clone()) {
                continue;
            }
            match ask(&node, probe).await {
                Ok(Answer::Leads) => return Ok(node),
                Ok(Answer::Names(leader)) => queue.push_front(leader),
                Ok(Answer::Nobody(why)) | Err(why) => last_error = format!("{node}: {why}"),
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("no node of {} answered as leader (last: {last_error})", nodes.join(", "));
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

enum Answer {
    Leads,
    /// Not the leader; the leader's address (https://).
    Names(String),
    /// No leader known there (an election, or no quorum).
    Nobody(String),
}

/// One question to one node: a read every operator may make, which only the leader answers.
async fn ask(node: &str, probe: &ProbeFn) -> Result<Answer, String> {
    let endpoint = probe(node).map_err(|error| format!("{error:#}"))?;
    let asked = async {
        let channel = endpoint.connect().await.map_err(|error| crate::connect::chain(&error))?;
        let mut operator = OperatorServiceClient::new(channel);
        let request = proto::ListParticipantsRequest { page_size: 1, page_token: String::new() };
        match operator.list_participants(request).await {
            Ok(_) => Ok(Answer::Leads),
            Err(status) => match (switch::reason::reason_of(&status), leader_named(&status)) {
                (Some(Reason::NotLeader), Some(leader)) => Ok(Answer::Names(leader)),
                _ => Ok(Answer::Nobody(crate::connect::describe(&status))),
            },
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, asked).await.unwrap_or_else(|_| Err("no answer in time".into()))
}

/// The `switch-leader` trailer of a NOT_LEADER refusal, as an https:// address.
fn leader_named(status: &tonic::Status) -> Option<String> {
    let named = status.metadata().get("switch-leader")?.to_str().ok()?;
    Some(format!("https://{named}"))
}

/// A channel that follows the leader: its one endpoint is the current leader's, replaced when
/// the leader changes (calls on the old connection fail in doubt; later calls go to the new
/// one). `endpoint` makes the endpoint, with this connection's identity, for an address.
pub fn following_channel(
    leader: &Leader,
    endpoint: impl Fn(&str) -> anyhow::Result<Endpoint> + Send + 'static,
) -> anyhow::Result<Channel> {
    use tonic::transport::channel::Change;
    let mut changes = leader.watch();
    let first = changes.borrow_and_update().clone();
    let (channel, sender) = Channel::balance_channel::<String>(4);
    sender
        .try_send(Change::Insert(first.clone(), endpoint(&first)?))
        .map_err(|_| anyhow::anyhow!("the connection's endpoint list is closed"))?;
    tokio::spawn(async move {
        let mut serving = first;
        // Ends when the leader is dropped (the run is over) or the channel is (nobody uses it).
        while changes.changed().await.is_ok() {
            let next = changes.borrow_and_update().clone();
            let made = match endpoint(&next) {
                Ok(made) => made,
                Err(error) => {
                    // This connection stays on the old leader; its calls fail in doubt and are
                    // resent until FAILOVER_WAIT: say why rather than wait in silence.
                    eprintln!("loadgen: cannot connect to the new leader {next}: {error:#}");
                    continue;
                }
            };
            if sender.send(Change::Remove(serving.clone())).await.is_err() {
                return;
            }
            if sender.send(Change::Insert(next.clone(), made)).await.is_err() {
                return;
            }
            serving = next;
        }
    });
    Ok(channel)
}

/// The longest stretch without a completion that overlaps each failover, from the per-second
/// completions of the run (`completed[t]` for second t of the measured phase).
pub fn fill_gaps(failovers: &mut [Failover], completed: &[(u32, u64)]) {
    // Runs of whole seconds without a completion, [start, end), found once for all failovers.
    let mut seconds = completed.to_vec();
    seconds.sort_by_key(|(second, _)| *second);
    let mut silent: Vec<(u32, u32)> = Vec::new();
    for (second, _) in seconds.into_iter().filter(|(_, count)| *count == 0) {
        match silent.last_mut() {
            Some((_, end)) if *end == second => *end = second + 1,
            _ => silent.push((second, second + 1)),
        }
    }
    for failover in failovers.iter_mut() {
        let (lost, found) = (failover.lost_at_s, failover.lost_at_s + failover.found_after_s);
        let longest = silent
            .iter()
            .filter(|(start, end)| f64::from(*start) <= found + 1.0 && f64::from(*end) >= lost - 1.0)
            .map(|(start, end)| f64::from(end - start))
            .fold(0.0, f64::max);
        // Whole seconds without a completion bound the gap from above; the search's own time
        // (from the first failed call to a leader answering) bounds it from below.
        failover.gap_s = longest.max(failover.found_after_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(lost: f64, found_after: f64) -> Failover {
        Failover { lost_at_s: lost, found_after_s: found_after, ..Failover::default() }
    }

    #[test]
    fn the_gap_is_the_silent_stretch_around_the_failover() {
        // Completions every second but 10, 11 and 12; the leader was lost at 10.2 and found 2.5 s later.
        let completed: Vec<(u32, u64)> = (0..20).map(|s| (s, if (10..13).contains(&s) { 0 } else { 100 })).collect();
        let mut failovers = vec![failover(10.2, 2.5), failover(4.0, 0.3)];
        fill_gaps(&mut failovers, &completed);
        assert_eq!(failovers[0].gap_s, 3.0, "three silent seconds");
        // No silent second near the second failover: the search's own time is the gap.
        assert_eq!(failovers[1].gap_s, 0.3);
    }

    #[test]
    fn a_silence_that_lasts_to_the_end_of_the_run_counts_whole() {
        // Nothing completed from second 17 to the end (19): three seconds.
        let completed: Vec<(u32, u64)> = (0..20).map(|s| (s, if s >= 17 { 0 } else { 100 })).collect();
        let mut failovers = vec![failover(17.1, 1.0)];
        fill_gaps(&mut failovers, &completed);
        assert_eq!(failovers[0].gap_s, 3.0);
    }

    #[test]
    fn in_doubt_is_what_a_new_leader_can_resolve_and_shedding_is_not() {
        assert!(in_doubt(&tonic::Status::unavailable("connection refused")));
        assert!(in_doubt(&tonic::Status::deadline_exceeded("loadgen's call timeout passed")));
        assert!(in_doubt(&tonic::Status::internal("h2 protocol error")));
        assert!(!in_doubt(&tonic::Status::resource_exhausted("busy")));
        assert!(!in_doubt(&tonic::Status::invalid_argument("bad")));
        assert!(!in_doubt(&tonic::Status::failed_precondition("insufficient liquidity")));
    }
}
