//! Deterministic simulation harness for ringkv nodes under madsim. Not built yet (issue 4).
