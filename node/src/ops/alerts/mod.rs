//! Alerts: rules over the node's figures, checks and runs ([`rules`]), the state machine that
//! fires and resolves them ([`engine`]), and the task that feeds it and acts ([`driver`]):
//! a log line, an alert document (`alerts/<node>/<window>`) that travels up the aggregator
//! chain to the cloud like results, retention run early, a command, a webhook.
//!
//! Rules come from `[[alerts.rules]]` in `rhizome.toml` and from the fleet's rules in the
//! mesh registry, signed on a control node (`rhizome alerts apply`), so a rule applied at the
//! cloud reaches every node, offline ones when they return. A rule of `rhizome.toml` takes
//! precedence over a fleet rule of the same name: the node's operator knows its site.

pub mod driver;
pub mod engine;
pub mod rules;

pub use driver::{AlertView, AlertsHandle, AlertsView, RuleView};
pub use rules::RuleConfig;
