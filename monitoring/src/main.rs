//! `fairshare-monitoring series RECORDING TEST`: puts the series of a
//! recording (see `monitoring/record.sh`) into a promtool test file, between
//! its BEGIN and END lines, as scraped from one node_exporter.

use std::process::ExitCode;

use fairshare_monitoring::{input_series, recording, splice};

/// The target labels the recorded series get, as if scraped by Prometheus.
const TARGET: [(&str, &str); 2] = [("instance", "login1:9100"), ("job", "node")];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, rec, test] = args.as_slice() else {
        eprintln!("usage: fairshare-monitoring series RECORDING PROMTOOL-TEST-FILE");
        return ExitCode::from(2);
    };
    if cmd != "series" {
        eprintln!("usage: fairshare-monitoring series RECORDING PROMTOOL-TEST-FILE");
        return ExitCode::from(2);
    }
    let result = (|| -> Result<(), String> {
        let r = std::fs::read_to_string(rec).map_err(|e| format!("{rec}: {e}"))?;
        let r = recording(&r).map_err(|e| format!("{rec}: {e}"))?;
        let t = std::fs::read_to_string(test).map_err(|e| format!("{test}: {e}"))?;
        let new = splice(&t, &input_series(&r, &TARGET, 6)).map_err(|e| format!("{test}: {e}"))?;
        std::fs::write(test, new).map_err(|e| format!("{test}: {e}"))?;
        println!("{test}: {} samples, {} s apart", r.samples.len(), r.step);
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fairshare-monitoring: {e}");
            ExitCode::FAILURE
        }
    }
}
