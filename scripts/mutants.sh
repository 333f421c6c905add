#!/usr/bin/env bash
# Mutation testing of the safety-relevant code (issue 11): cargo-mutants
# breaks one line at a time (a `>` for a `>=`, a body replaced by a default,
# a condition negated) in the functions that carry a Raft safety rule or the
# state machine's preconditions, and runs the core's fast tests (unit tests,
# scripted scenarios, the randomized simulation with its history and
# invariant checkers) against each. A mutant no test catches is a rule the
# simulations cannot see broken; docs/testing.md lists the survivors and
# what became of each.
#
#   cargo install cargo-mutants        # once
#   ./scripts/mutants.sh               # the safety-relevant functions below
#   ./scripts/mutants.sh --list        # what would be tried
#   ./scripts/mutants.sh --iterate     # skip what earlier runs caught
#
#   RINGKV_SIM_SEEDS   seeds of the randomized simulation per mutant (60)
#   MUTANTS_FUNCTIONS  a narrower function regex than the default below,
#                      e.g. 'RaftLog::.*|Raft::maybe_commit' (extra `--re`
#                      arguments would widen the scope: cargo-mutants ORs them)
#
# Results: target/mutants-out/mutants.out/{caught,missed,timeout,unviable}.txt.
# On 2 cores each mutant takes 30-40 s (an incremental build in the
# `mutants` profile, then about 20 s of tests): the default scope of about
# 150 mutants takes about 1.5 hours. Run it in the background.
set -euo pipefail
cd "$(dirname "$0")/.."

# Safety-relevant functions, by rule:
#   commit:        Raft::maybe_commit, committed_in_term, RaftLog::commit_to,
#                  take_committed, Progress::maybe_update
#   vote:          Raft::handle_vote_request, tally, step (term rules),
#                  step_candidate, RaftLog::is_up_to_date
#   log matching:  Raft::handle_append, RaftLog::maybe_append, match_term, term
#   persist-before-speak: Raft::on_persisted, take_ready, RaftLog::on_persisted,
#                  take_unsaved, Node::process_group, Node::handle_persisted
#   lease / ReadIndex: RaftConfig::lease_ticks, Raft::lease_valid, in_lease,
#                  lease_expires_at, quorum_acked_round, read, release_reads,
#                  the unknown lease a restarted member honours (tick_election,
#                  start_election, become_follower), send_timeout_now
#   CAS precondition: KvStore::apply_command, check_revisions, Precondition::holds
#   membership:    quorums (Membership::quorum_value, vote_result, has_quorum,
#                  apply), the configuration in force (Raft::refresh_conf,
#                  conf_at, promotable, propose_conf_change, conf_duties,
#                  removal_settled, snapshot_adds), and a group's lifecycle
#                  (Node::destroy_group, message_for_unhosted_group,
#                  Recovered::is_fresh)
#   cluster metadata and placement: the document's change rules
#                  (ClusterMetadata::apply, MemberState::may_become), gossip
#                  (Node::observe_gossip, after_metadata_group), the
#                  controller's orders and its writes to the member list
#                  (Node::handle_placement, propose_metadata_changes,
#                  handle_drain), and the planner's make-before-break and
#                  throttle (planner::plan, wanted_move, check_drain)
#   access:        who may do what (access::authenticate, parse_token,
#                  valid_id, TokenRecord::validate, Grant::check,
#                  range_in_scope, scope_end) and the controller's token
#                  changes (Node::handle_token_change)
functions='Raft::(maybe_commit|committed_in_term|handle_vote_request|tally|step|step_candidate|handle_append|on_persisted|take_ready|lease_valid|in_lease|lease_expires_at|quorum_acked_round|read|release_reads|tick_election|start_election|become_follower|send_timeout_now)'
functions="${functions}|RaftConfig::lease_ticks"
functions="${functions}|RaftLog::(commit_to|take_committed|is_up_to_date|maybe_append|match_term|term|on_persisted|take_unsaved)"
functions="${functions}|Progress::maybe_update"
functions="${functions}|Node::(process_group|handle_persisted)"
functions="${functions}|KvStore::apply_command|check_revisions|Precondition::holds"
functions="${functions}|Membership::(quorum_value|vote_result|has_quorum|apply)"
functions="${functions}|Raft::(refresh_conf|conf_at|promotable|propose_conf_change|conf_duties|removal_settled|snapshot_adds)"
functions="${functions}|Node::(destroy_group|message_for_unhosted_group)|Recovered::is_fresh"
functions="${functions}|ClusterMetadata::apply|MemberState::may_become"
functions="${functions}|Node::(observe_gossip|after_metadata_group|handle_placement|propose_metadata_changes|handle_drain)"
functions="${functions}|plan|wanted_move|check_drain"
functions="${functions}|authenticate|parse_token|valid_id|TokenRecord::validate|Grant::(check|range_in_scope)|scope_end|Node::handle_token_change"

functions="${MUTANTS_FUNCTIONS:-$functions}"

export RINGKV_SIM_SEEDS="${RINGKV_SIM_SEEDS:-60}"
exec cargo mutants \
  --package ringkv-core --test-package ringkv-core \
  --profile mutants \
  --file core/src/raft/mod.rs --file core/src/raft/log.rs --file core/src/raft/progress.rs \
  --file core/src/node/mod.rs --file core/src/node/cluster.rs --file core/src/node/controller.rs \
  --file core/src/kv.rs --file core/src/raft/membership.rs \
  --file core/src/metadata.rs --file core/src/placement/planner.rs --file core/src/access.rs \
  --re "in (${functions})\$" \
  --timeout 240 --build-timeout 600 \
  --output target/mutants-out \
  "$@"
