//! The alert state machine, free of IO: given the rules and what each subject is now, which
//! alerts start to hold, fire, and resolve.
//!
//! A rule is `ok`, `pending` (its condition holds, for less than its duration) or `firing`.
//! A firing is one alert, named by the rule and the time it fired: it stays one alert while
//! the condition keeps holding, however often the rule is evaluated, and across restarts of
//! the node (the driver restores the firings its documents hold), so a condition that holds
//! for an hour is one alert, not seven hundred.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rules::{Rule, Subject, Value};

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleState {
    Ok,
    Pending,
    Firing,
}

/// One rule's state between evaluations.
#[derive(Debug, Clone, Default)]
struct Tracked {
    /// Since when the condition has held without a break.
    holding_since: Option<i64>,
    /// When the alert fired, while it is firing.
    fired_ms: Option<i64>,
    /// What was seen last, as shown.
    last_seen: Option<String>,
}

/// A change to announce.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The condition has held for the rule's duration.
    Fired {
        rule: String,
        fired_ms: i64,
        value: String,
    },
    /// The condition stopped holding (or the rule went away) after the alert fired.
    Resolved {
        rule: String,
        fired_ms: i64,
        resolved_ms: i64,
        value: String,
    },
}

/// A rule's state for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub state: RuleState,
    /// Since when the condition has held (pending or firing).
    pub since_ms: Option<i64>,
    /// When it fired, while firing.
    pub fired_ms: Option<i64>,
    /// What was seen last; `None` when the subject is absent on this host.
    pub last_seen: Option<String>,
}

/// Every rule's state.
#[derive(Debug, Default)]
pub struct Engine {
    tracked: BTreeMap<String, Tracked>,
}

impl Engine {
    /// Takes up a firing recorded before a restart: the rule counts as firing since then, so
    /// that the same condition does not fire a second alert.
    pub fn restore(&mut self, rule: &str, fired_ms: i64) {
        let tracked = self.tracked.entry(rule.to_owned()).or_default();
        if tracked.fired_ms.is_none_or(|known| known < fired_ms) {
            tracked.fired_ms = Some(fired_ms);
            tracked.holding_since = Some(fired_ms);
        }
    }

    /// Evaluates every rule at `now_ms`, with `observe` telling what a subject is now
    /// (`None`: absent here, which never meets a condition).
    pub fn step(
        &mut self,
        rules: &[Rule],
        now_ms: i64,
        mut observe: impl FnMut(&Subject) -> Option<Value>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        for rule in rules {
            let seen = observe(&rule.condition.subject);
            let holds = seen.as_ref().is_some_and(|v| rule.condition.holds(v));
            let shown = seen.as_ref().map(|v| rule.show(v));
            let tracked = self.tracked.entry(rule.name.clone()).or_default();
            tracked.last_seen = shown.clone();
            if holds {
                let since = *tracked.holding_since.get_or_insert(now_ms);
                if tracked.fired_ms.is_none() && now_ms - since >= rule.hold.as_millis() as i64 {
                    tracked.fired_ms = Some(now_ms);
                    out.push(Transition::Fired {
                        rule: rule.name.clone(),
                        fired_ms: now_ms,
                        value: shown.unwrap_or_default(),
                    });
                }
            } else {
                tracked.holding_since = None;
                if let Some(fired_ms) = tracked.fired_ms.take() {
                    out.push(Transition::Resolved {
                        rule: rule.name.clone(),
                        fired_ms,
                        resolved_ms: now_ms,
                        value: shown.unwrap_or_else(|| "absent".into()),
                    });
                }
            }
        }
        // A rule withdrawn or removed while firing resolves: nothing watches it any more.
        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|name| !rules.iter().any(|r| &r.name == *name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(fired_ms) = self.tracked.remove(&name).and_then(|t| t.fired_ms) {
                out.push(Transition::Resolved {
                    rule: name,
                    fired_ms,
                    resolved_ms: now_ms,
                    value: "the rule was removed".into(),
                });
            }
        }
        out
    }

    /// Where `rule` stands.
    pub fn status(&self, rule: &str) -> RuleStatus {
        let tracked = self.tracked.get(rule).cloned().unwrap_or_default();
        RuleStatus {
            state: match (tracked.fired_ms, tracked.holding_since) {
                (Some(_), _) => RuleState::Firing,
                (None, Some(_)) => RuleState::Pending,
                (None, None) => RuleState::Ok,
            },
            since_ms: tracked.holding_since,
            fired_ms: tracked.fired_ms,
            last_seen: tracked.last_seen,
        }
    }

    /// The rules firing now.
    pub fn firing(&self) -> Vec<(String, i64)> {
        self.tracked
            .iter()
            .filter_map(|(name, t)| t.fired_ms.map(|at| (name.clone(), at)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::rules::{Origin, RuleConfig};
    use super::*;

    fn rule(name: &str, when: &str, hold: &str) -> Rule {
        Rule::new(
            &RuleConfig {
                name: name.into(),
                when: when.into(),
                hold: hold.into(),
                actions: vec!["log".into()],
                command: String::new(),
                webhook: String::new(),
                severity: "warning".into(),
            },
            Origin::Config,
        )
        .unwrap()
    }

    fn cpu(v: f64) -> impl FnMut(&Subject) -> Option<Value> {
        move |_| Some(Value::Number(v))
    }

    #[test]
    fn a_condition_fires_once_after_its_duration_and_resolves_once() {
        let rules = [rule("hot", "cpu_usage > 90", "10s")];
        let mut engine = Engine::default();
        assert!(engine.step(&rules, 0, cpu(95.0)).is_empty());
        assert_eq!(engine.status("hot").state, RuleState::Pending);
        assert!(engine.step(&rules, 9_999, cpu(95.0)).is_empty());
        let fired = engine.step(&rules, 10_000, cpu(99.0));
        assert_eq!(
            fired,
            vec![Transition::Fired {
                rule: "hot".into(),
                fired_ms: 10_000,
                value: "99%".into()
            }]
        );
        // Holding on is the same alert.
        for t in 1..100 {
            assert!(
                engine
                    .step(&rules, 10_000 + t * 5_000, cpu(97.0))
                    .is_empty()
            );
        }
        let resolved = engine.step(&rules, 600_000, cpu(10.0));
        assert_eq!(
            resolved,
            vec![Transition::Resolved {
                rule: "hot".into(),
                fired_ms: 10_000,
                resolved_ms: 600_000,
                value: "10%".into()
            }]
        );
        assert_eq!(engine.status("hot").state, RuleState::Ok);
        assert!(engine.step(&rules, 605_000, cpu(10.0)).is_empty());
    }

    #[test]
    fn a_break_in_the_condition_restarts_its_duration() {
        let rules = [rule("hot", "cpu_usage > 90", "10s")];
        let mut engine = Engine::default();
        engine.step(&rules, 0, cpu(95.0));
        engine.step(&rules, 5_000, cpu(50.0));
        assert!(engine.step(&rules, 10_000, cpu(95.0)).is_empty());
        assert!(engine.step(&rules, 19_000, cpu(95.0)).is_empty());
        assert_eq!(engine.step(&rules, 20_000, cpu(95.0)).len(), 1);
    }

    #[test]
    fn a_restored_firing_is_not_fired_again_and_resolves_when_the_condition_is_gone() {
        let rules = [rule("full", "disk_free < 100MB", "")];
        let mut engine = Engine::default();
        engine.restore("full", 1_000);
        assert!(
            engine
                .step(&rules, 50_000, |_| Some(Value::Number(1e6)))
                .is_empty()
        );
        assert_eq!(engine.status("full").fired_ms, Some(1_000));
        let resolved = engine.step(&rules, 60_000, |_| Some(Value::Number(1e9)));
        assert!(matches!(
            resolved.as_slice(),
            [Transition::Resolved {
                fired_ms: 1_000,
                resolved_ms: 60_000,
                ..
            }]
        ));
    }

    #[test]
    fn an_absent_subject_never_holds_and_a_removed_rule_resolves() {
        let rules = [rule("warm", "temperature > 80", "")];
        let mut engine = Engine::default();
        assert!(engine.step(&rules, 0, |_| None).is_empty());
        assert_eq!(engine.status("warm").state, RuleState::Ok);
        assert_eq!(
            engine
                .step(&rules, 1_000, |_| Some(Value::Number(85.0)))
                .len(),
            1
        );
        let resolved = engine.step(&[], 2_000, |_| None);
        assert!(matches!(
            resolved.as_slice(),
            [Transition::Resolved { rule, .. }] if rule == "warm"
        ));
        assert!(engine.firing().is_empty());
    }
}
