//! Applying an executed log entry (op level 3): the leader ran the domain
//! once (`crate::leader_exec`); every replica writes the entry's write set
//! and records each command's reply in the exactly-once table, without
//! running billing logic. The state machine then tells the leader which of
//! its pending write sets are applied (`ReadFence::exec_applied`).
//!
//! The premise check: an entry's write set is valid only on the state left
//! by the entry its leader executed just before it (`Executed::prev`, in
//! the same epoch). openraft may refuse one write and accept the next
//! (a leader whose lease lapsed for a moment refuses writes without losing
//! its term), so a replica checks the chain (`domain::exec_chain`,
//! replicated state): an entry whose predecessor was never applied is
//! executed here from its commands instead, like an entry without results,
//! and so is every later entry of that epoch. Every replica decides alike,
//! from the log and the state.
//!
//! With `verify` (`[raft] verify_results`) a replica also re-executes the
//! commands on its own state and refuses the entry when its writes or
//! replies differ from the leader's: a divergence stops apply on that
//! replica, loudly, instead of spreading.
//!
//! Touches the given transaction only (no RocksDB handle of its own).

use crate::domain::{self, Family, Scratch, Txn};
use crate::types::{Command, CommandReply, Executed};

/// Most differing writes a divergence error lists.
const DIVERGENCE_LISTED_MAX: usize = 5;

/// Writes `executed` into `txn` for the entry at `log_index` (of `term`)
/// and answers its commands; `None` when its premise does not hold (the
/// caller executes the commands instead). Errors: a malformed entry (reply
/// count), a replica whose exactly-once table disagrees with the leader's
/// replies, or (with `verify`) any difference from re-executing here.
pub fn apply<T: Txn>(
    txn: &mut T,
    log_index: u64,
    term: u64,
    commands: &[Command],
    executed: &Executed,
    verify: bool,
) -> Result<Option<Vec<CommandReply>>, std::io::Error> {
    let chain = domain::exec_chain(&*txn)?;
    if executed.prev != 0 && chain != Some((term, executed.epoch, executed.prev)) {
        metrics::counter!("billdb_exec_premise_broken_total").increment(1);
        tracing::warn!(
            log_index,
            epoch = executed.epoch,
            prev = executed.prev,
            ?chain,
            "an entry's write set was computed after an entry that was never applied: \
             executing its commands here instead"
        );
        return Ok(None);
    }
    if executed.replies.len() != commands.len() {
        return Err(std::io::Error::other(format!(
            "entry {log_index}: {} replies for {} commands",
            executed.replies.len(),
            commands.len()
        )));
    }
    if verify {
        reexecute_and_compare(&*txn, log_index, commands, executed)?;
    }
    for (family, key, value) in &executed.writes {
        if *family == Family::Requests {
            return Err(std::io::Error::other(format!(
                "entry {log_index}: a write set may not write the exactly-once table"
            )));
        }
        match value {
            Some(v) => txn.put(*family, key.clone(), v.clone()),
            None => txn.delete(*family, key.clone()),
        }
    }
    let mut replies = Vec::with_capacity(commands.len());
    for (cmd, reply) in commands.iter().zip(&executed.replies) {
        let (outcome, decided_at) = domain::record(txn, log_index, cmd, reply)?;
        replies.push(CommandReply {
            outcome,
            decided_at,
        });
    }
    domain::set_exec_chain(txn, (term, executed.epoch, executed.seq))?;
    Ok(Some(replies))
}

/// Re-executes `commands` on `view` (the state before the entry) and
/// compares replies and writes with what the leader decided.
fn reexecute_and_compare<G: domain::Get + ?Sized>(
    view: &G,
    log_index: u64,
    commands: &[Command],
    executed: &Executed,
) -> Result<(), std::io::Error> {
    let mut scratch = Scratch::new(view);
    for (i, (cmd, reply)) in commands.iter().zip(&executed.replies).enumerate() {
        let mine = domain::execute(&mut scratch, domain::PENDING_LOG_INDEX, cmd)?.reply();
        if mine != *reply {
            metrics::counter!("billdb_exec_divergences_total").increment(1);
            return Err(std::io::Error::other(format!(
                "entry {log_index}: re-executing command {i} ({}) here answers {mine:?}, \
                 the leader answered {reply:?}: this replica's state differs from the leader's",
                cmd.request_id
            )));
        }
    }
    let mine: Vec<_> = scratch
        .into_writes()
        .into_sorted()
        .into_iter()
        .filter(|(family, _, _)| *family != Family::Requests)
        .collect();
    if mine != executed.writes {
        metrics::counter!("billdb_exec_divergences_total").increment(1);
        let differing: Vec<String> = differences(&mine, &executed.writes)
            .take(DIVERGENCE_LISTED_MAX)
            .collect();
        return Err(std::io::Error::other(format!(
            "entry {log_index}: re-executing here writes {} keys, the leader's write set {}; \
             first differences: {}: this replica's state differs from the leader's",
            mine.len(),
            executed.writes.len(),
            differing.join("; ")
        )));
    }
    Ok(())
}

type Write = (Family, Vec<u8>, Option<Vec<u8>>);

/// The writes that differ between two sorted write sets, named by family
/// and key (hex), for an error message.
fn differences<'a>(mine: &'a [Write], leader: &'a [Write]) -> impl Iterator<Item = String> + 'a {
    let key = |w: &Write| (w.0, w.1.clone());
    let mut all: Vec<(Family, Vec<u8>)> = mine.iter().chain(leader).map(key).collect();
    all.sort();
    all.dedup();
    all.into_iter().filter_map(move |(family, k)| {
        let find = |set: &[Write]| {
            set.iter()
                .find(|w| w.0 == family && w.1 == k)
                .map(|w| w.2.clone())
        };
        let (a, b) = (find(mine), find(leader));
        (a != b).then(|| {
            format!(
                "{}/{}: here {}, leader {}",
                family.name(),
                hex::encode(&k),
                show(&a),
                show(&b)
            )
        })
    })
}

fn show(w: &Option<Option<Vec<u8>>>) -> String {
    match w {
        None => "not written".into(),
        Some(None) => "deleted".into(),
        Some(Some(v)) => format!("{} bytes", v.len()),
    }
}
