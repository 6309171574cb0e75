//! Running workflows: the definition format and its validation ([`workflow`]), bounds on
//! untrusted text checked before parsing ([`prescan`]), the engine that runs one run
//! ([`engine`]) and the scheduler that decides when and where runs happen ([`scheduler`]);
//! a workflow's versions over time, rollbacks and deletions ([`history`]); artifacts a version
//! references instead of paths ([`artifact_refs`]); staged rollouts of a version ([`rollout`]).

pub mod artifact_refs;
pub mod engine;
pub mod history;
pub mod prescan;
pub mod rollout;
pub mod scheduler;
pub mod workflow;
