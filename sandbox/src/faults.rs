//! Fault injection, per emulator: added latency, error rates (500, 502), timeouts,
//! answers lost after the change was made, 429 storms and dropped webhooks. Every
//! emulator also records when each request came, so that a test can check the
//! request rate a client kept to.
//!
//! A spec is a comma-separated list, e.g.
//! `latency=20ms,errors=0.05,timeouts=0.01,storm=5s/60s,drop-webhooks=0.2`:
//!
//! | key | meaning |
//! |---|---|
//! | `latency=D` | every request waits D first (`ms` or `s`) |
//! | `errors=P` | a request fails with 500 or 502 with probability P |
//! | `timeouts=P` | a request hangs for `hang` (default 30s) and then gets 504, with probability P |
//! | `lost=P` | a request is carried out, then its answer is lost: it hangs for `hang` and gets 504, with probability P (the caller cannot tell it from a timeout) |
//! | `lost-created=P` | the same, for answers `201 Created` only: a record is made and the caller does not learn it |
//! | `hang=D` | how long a timed-out request hangs |
//! | `storm=ON/PERIOD` | in every PERIOD counted from when the faults were set, the first ON answers 429 to everything |
//! | `drop-webhooks=P` | an outgoing webhook delivery is silently lost with probability P |

use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to break, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    pub latency: Duration,
    pub error_rate: f64,
    pub timeout_rate: f64,
    pub lost_rate: f64,
    /// Of answers `201 Created` only.
    pub lost_created_rate: f64,
    pub hang: Duration,
    pub storm: Option<(Duration, Duration)>,
    pub drop_webhooks: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            timeout_rate: 0.0,
            lost_rate: 0.0,
            lost_created_rate: 0.0,
            hang: Duration::from_secs(30),
            storm: None,
            drop_webhooks: 0.0,
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration such as 250ms or 5s");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs
            .parse::<f64>()
            .ok()
            .and_then(|v| Duration::try_from_secs_f64(v).ok())
            .ok_or_else(bad);
    }
    Err(bad())
}

fn probability(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("`{s}` is not a probability from 0 to 1"))
}

impl FromStr for Faults {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut f = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("fault `{part}` is not key=value"))?;
            match key {
                "latency" => f.latency = duration(value)?,
                "errors" => f.error_rate = probability(value)?,
                "timeouts" => f.timeout_rate = probability(value)?,
                "lost" => f.lost_rate = probability(value)?,
                "lost-created" => f.lost_created_rate = probability(value)?,
                "hang" => f.hang = duration(value)?,
                "drop-webhooks" => f.drop_webhooks = probability(value)?,
                "storm" => {
                    let (on, period) = value
                        .split_once('/')
                        .ok_or_else(|| format!("storm `{value}` is not ON/PERIOD, e.g. 5s/60s"))?;
                    let (on, period) = (duration(on)?, duration(period)?);
                    if period.is_zero() || on > period {
                        return Err(format!("storm `{value}`: ON must not exceed a non-zero PERIOD"));
                    }
                    f.storm = Some((on, period));
                }
                other => {
                    return Err(format!(
                        "unknown fault `{other}`: expected latency, errors, timeouts, lost, lost-created, hang, storm or drop-webhooks"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// Builds a provider's own 429 answer.
pub type TooManyRequests = fn() -> Response;

/// Faults in force for one emulator, changeable while it runs.
#[derive(Debug)]
pub struct FaultState {
    /// The faults, and when they were set: storms count their periods from then.
    faults: RwLock<(Faults, Instant)>,
    rng: Mutex<ChaCha8Rng>,
    too_many: TooManyRequests,
    /// When each request came, and its path.
    seen: Mutex<Vec<(Instant, String)>>,
}

impl FaultState {
    pub fn new(faults: Faults, seed: u64, too_many: TooManyRequests) -> Arc<Self> {
        Arc::new(Self {
            faults: RwLock::new((faults, Instant::now())),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0xfa17)),
            too_many,
            seen: Mutex::new(Vec::new()),
        })
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.write().expect("faults lock") = (faults, Instant::now());
    }

    pub fn get(&self) -> Faults {
        self.faults.read().expect("faults lock").0.clone()
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().expect("rng lock").gen_bool(p.min(1.0))
    }

    /// The most requests whose path `counts` seen within any `window`.
    pub fn peak_requests(&self, window: Duration, counts: impl Fn(&str) -> bool) -> usize {
        let seen = self.seen.lock().expect("seen lock");
        let times: Vec<Instant> = seen
            .iter()
            .filter(|(_, path)| counts(path))
            .map(|(t, _)| *t)
            .collect();
        let mut peak = 0;
        let mut start = 0;
        for (end, t) in times.iter().enumerate() {
            while *t - times[start] >= window {
                start += 1;
            }
            peak = peak.max(end + 1 - start);
        }
        peak
    }

    /// Requests seen so far whose path `counts`.
    pub fn requests(&self, counts: impl Fn(&str) -> bool) -> usize {
        let seen = self.seen.lock().expect("seen lock");
        seen.iter().filter(|(_, path)| counts(path)).count()
    }

    /// Whether the next outgoing webhook delivery should be lost.
    pub fn drop_webhook(&self) -> bool {
        self.roll(self.get().drop_webhooks)
    }

    fn in_storm(&self) -> bool {
        let (faults, since) = &*self.faults.read().expect("faults lock");
        faults.storm.is_some_and(|(on, period)| {
            let t = since.elapsed().as_nanos() % period.as_nanos();
            t < on.as_nanos()
        })
    }
}

/// Middleware applying the faults in force before the emulator answers.
pub async fn apply(State(state): State<Arc<FaultState>>, request: Request, next: Next) -> Response {
    state
        .seen
        .lock()
        .expect("seen lock")
        .push((Instant::now(), request.uri().path().to_owned()));
    let f = state.get();
    if !f.latency.is_zero() {
        tokio::time::sleep(f.latency).await;
    }
    if state.in_storm() {
        return (state.too_many)();
    }
    if state.roll(f.timeout_rate) {
        tokio::time::sleep(f.hang).await;
        return (
            StatusCode::GATEWAY_TIMEOUT,
            Body::from("upstream timed out"),
        )
            .into_response();
    }
    if state.roll(f.error_rate) {
        let status = if state.roll(0.5) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_GATEWAY
        };
        return (status, Body::from("injected failure")).into_response();
    }
    let answer = next.run(request).await;
    let created = answer.status() == StatusCode::CREATED;
    if state.roll(f.lost_rate) || (created && state.roll(f.lost_created_rate)) {
        tokio::time::sleep(f.hang).await;
        return (
            StatusCode::GATEWAY_TIMEOUT,
            Body::from("upstream timed out"),
        )
            .into_response();
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let f: Faults =
            "latency=20ms,errors=0.05,timeouts=0.01,storm=5s/60s,drop-webhooks=0.2,hang=1.5s,lost=0.1"
                .parse()
                .unwrap();
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.error_rate, 0.05);
        assert_eq!(
            f.storm,
            Some((Duration::from_secs(5), Duration::from_secs(60)))
        );
        assert_eq!(f.hang, Duration::from_millis(1500));
        assert_eq!(f.lost_rate, 0.1);
        let created: Faults = "lost-created=1".parse().unwrap();
        assert_eq!(created.lost_created_rate, 1.0);
        assert_eq!("".parse::<Faults>().unwrap(), Faults::default());
        for (bad, why) in [
            ("errors=2", "probability"),
            ("latency=fast", "duration"),
            ("latency=infs", "duration"),
            ("hang=1e300s", "duration"),
            ("hang=-1s", "duration"),
            ("hang=NaNs", "duration"),
            ("latency=99999999999999999999999ms", "duration"),
            ("storm=10s/5s", "must not exceed"),
            ("melt=1", "unknown fault"),
            ("errors", "key=value"),
        ] {
            let err = bad.parse::<Faults>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_peak_is_the_most_requests_in_any_window() {
        fn busy() -> Response {
            StatusCode::TOO_MANY_REQUESTS.into_response()
        }
        let state = FaultState::new(Faults::default(), 1, busy);
        let t0 = Instant::now();
        {
            let mut seen = state.seen.lock().unwrap();
            for ms in [0, 100, 200, 900, 1000, 1050, 1100, 1200, 3000] {
                seen.push((t0 + Duration::from_millis(ms), "/api".into()));
            }
            seen.push((t0 + Duration::from_millis(1001), "/oauth/token".into()));
        }
        let api = |p: &str| !p.contains("/oauth/");
        // 100..1050 and 900..1200 hold five API requests within a second (the
        // window is half-open: 200 and 1200 are a second apart).
        assert_eq!(state.peak_requests(Duration::from_secs(1), api), 5);
        assert_eq!(state.peak_requests(Duration::from_millis(150), api), 3);
        assert_eq!(state.requests(api), 9);
        assert_eq!(state.requests(|_| true), 10);
    }
}
