//! The built-in transforms: what they compute, and how they refuse bad configuration and input.

use agents::{Agent, AgentError, Registry, RunContext};
use futures_executor::block_on;
use serde_json::{Value, json};

fn agent(kind: &str, config: Value) -> Box<dyn Agent> {
    Registry.create(kind, &config).unwrap()
}

fn run(agent: &dyn Agent, input: Value, now_ms: i64) -> Result<Value, AgentError> {
    block_on(agent.run(input, RunContext { now_ms }))
}

fn config_error(kind: &str, config: Value) -> String {
    Registry.create(kind, &config).unwrap_err().to_string()
}

#[test]
fn unknown_agents_and_fields_are_named() {
    let err = config_error("onnxx", json!({}));
    assert!(
        err.contains("unknown agent `onnxx`") && err.contains("threshold"),
        "{err}"
    );
    let err = config_error("threshold", json!({"field": "v", "abvoe": 3}));
    assert!(err.contains("abvoe"), "{err}");
    let err = config_error("zscore", json!({"field": "v", "last": 5, "treshold": 2}));
    assert!(err.contains("treshold"), "{err}");
    let err = config_error("window_stats", json!({"field": "v", "last": 5, "bogus": 1}));
    assert!(err.contains("bogus"), "{err}");
    let err = config_error("window_stats", json!({"field": "v"}));
    assert!(err.contains("`last` or `duration`"), "{err}");
    let err = config_error(
        "window_stats",
        json!({"field": "v", "duration": "5 minutes"}),
    );
    assert!(err.contains("not a duration"), "{err}");
    let err = config_error("threshold", json!({"field": "v"}));
    assert!(err.contains("`above`, `below`"), "{err}");
    let err = config_error("threshold", json!({"field": "v", "above": 1, "below": 5}));
    assert!(err.contains("nothing could pass"), "{err}");
    let err = config_error("select", json!({"fields": ["a"], "rename": {"b": "c"}}));
    assert!(err.contains("`b`"), "{err}");
}

#[test]
fn select_keeps_and_renames() {
    let a = agent(
        "select",
        json!({"fields": ["temp", "site"], "rename": {"temp": "t"}}),
    );
    let out = run(&*a, json!({"temp": 21.5, "site": "a", "noise": 1}), 0).unwrap();
    assert_eq!(out, json!({"t": 21.5, "site": "a"}));
    let err = run(&*a, json!({"site": "a"}), 0).unwrap_err().to_string();
    assert!(err.contains("no field `temp`"), "{err}");
    let err = run(&*a, json!(3), 0).unwrap_err().to_string();
    assert!(err.contains("not an object"), "{err}");
}

#[test]
fn threshold_flags_values_outside_limits() {
    let a = agent("threshold", json!({"field": "v", "above": 30, "below": 10}));
    let triggered = |v: f64| {
        run(&*a, json!({"v": v}), 0).unwrap()["triggered"]
            .as_bool()
            .unwrap()
    };
    assert!(triggered(31.0));
    assert!(triggered(9.5));
    assert!(!triggered(20.0));
    assert!(!triggered(30.0), "the limit itself passes");
    let err = run(&*a, json!({"v": "hot"}), 0).unwrap_err().to_string();
    assert!(err.contains("not a number"), "{err}");
    let err = run(&*a, json!({"w": 1}), 0).unwrap_err().to_string();
    assert!(
        err.contains("no field `v`") && err.contains("it has: w"),
        "{err}"
    );
}

#[test]
fn window_stats_over_the_last_n_and_over_a_duration() {
    let a = agent("window_stats", json!({"field": "v", "last": 3}));
    for (i, v) in [1.0, 2.0, 3.0, 10.0].into_iter().enumerate() {
        let out = run(&*a, json!({"v": v}), i as i64).unwrap();
        if i == 3 {
            assert_eq!(out["count"], 3);
            assert_eq!(out["min"], 2.0);
            assert_eq!(out["max"], 10.0);
            assert_eq!(out["mean"], 5.0);
            let sd = out["stddev"].as_f64().unwrap();
            assert!((sd - 4.358898943540674).abs() < 1e-9, "{sd}");
        }
    }
    let b = agent("window_stats", json!({"field": "v", "duration": "10s"}));
    run(&*b, json!({"v": 100.0}), 0).unwrap();
    run(&*b, json!({"v": 1.0}), 5_000).unwrap();
    let out = run(&*b, json!({"v": 3.0}), 12_000).unwrap();
    assert_eq!(
        out["count"], 2,
        "the reading at 0 s left the 10 s window: {out}"
    );
    assert_eq!(out["mean"], 2.0);
}

#[test]
fn zscore_flags_a_spike_after_warmup() {
    let a = agent(
        "zscore",
        json!({"field": "v", "last": 20, "threshold": 3.0, "warmup": 5}),
    );
    let mut flagged = Vec::new();
    let readings = [20.0, 20.2, 19.9, 20.1, 20.0, 19.8, 20.2, 26.0, 20.1];
    for (i, v) in readings.into_iter().enumerate() {
        let out = run(&*a, json!({"v": v}), i as i64).unwrap();
        if out["anomaly"].as_bool().unwrap() {
            flagged.push(i);
        }
    }
    assert_eq!(flagged, vec![7]);
    // Nothing is flagged during warm-up, however odd the first readings.
    let b = agent("zscore", json!({"field": "v", "last": 20}));
    for (i, v) in [1.0, 100.0, 1.0, 100.0].into_iter().enumerate() {
        assert_eq!(
            run(&*b, json!({"v": v}), i as i64).unwrap()["anomaly"],
            false
        );
    }
}

#[test]
fn the_simulated_sensor_is_reproducible_from_its_seed() {
    let readings = |seed: u64| {
        let a = agent("sensor", json!({"seed": seed, "spike_probability": 0.1}));
        (0..50)
            .map(|i| run(&*a, Value::Null, i).unwrap()["value"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(readings(7), readings(7));
    assert_ne!(readings(7), readings(8));
    let values = readings(7);
    assert!(
        values.iter().all(|v| (15.0..30.0).contains(v)),
        "{values:?}"
    );
    let err = config_error("sensor", json!({"spike_probability": 2}));
    assert!(err.contains("spike_probability"), "{err}");
}

#[test]
fn noop_returns_its_input() {
    let a = agent("noop", Value::Null);
    assert_eq!(run(&*a, json!({"x": 1}), 0).unwrap(), json!({"x": 1}));
}
