//! `protection` (ban rules, IP rules, exemptions), a route's `quota`, and `cluster`.

use super::*;

/// Longest window a ban rule may count over.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest a ban may last.
const MAX_BAN: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn decode_protection(d: &mut Decoder<'_>, node: &Node, path: &str) -> ProtectionConfig {
    let mut out = ProtectionConfig::default();
    let Some(mut f) = Fields::new(d, node, path) else {
        return out;
    };
    if let Some((n, p)) = f.get("bans") {
        let mut seen = Vec::new();
        for (i, item) in seq(d, n, &p).iter().enumerate() {
            let ip = format!("{p}[{i}]");
            if let Some(rule) = decode_ban_rule(d, item, &ip) {
                if seen.contains(&(rule.on, rule.key)) {
                    d.err(item.pos, &ip, "another rule already counts these events for this key; merge them");
                }
                seen.push((rule.on, rule.key));
                out.bans.push(rule);
            }
        }
    }
    if let Some((n, p)) = f.get("ip_rules")
        && let Some(mut rf) = Fields::new(d, n, &p)
    {
        if let Some((n, p)) = rf.get("allow") {
            out.ip_allow = nets(d, n, &p);
            if out.ip_allow.is_empty() {
                d.err(n.pos, &p, "an empty allow list would refuse every client; remove it to allow all");
            }
        }
        if let Some((n, p)) = rf.get("deny") {
            out.ip_deny = nets(d, n, &p);
        }
        rf.finish(d);
    }
    if let Some((n, p)) = f.get("exempt") {
        out.exempt = nets(d, n, &p);
    }
    if let Some((n, p)) = f.get("ipv6_prefix")
        && let Some(v) = integer(d, n, &p, 32, 128)
    {
        out.ipv6_prefix = v as u8;
    }
    f.finish(d);
    out
}

fn decode_ban_rule(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<BanRule> {
    let mut f = Fields::new(d, node, path)?;
    let on = match f.get("on") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| match s {
            "auth_failures" => Some(BanTrigger::AuthFailures),
            "not_found" => Some(BanTrigger::NotFound),
            "rate_limited" => Some(BanTrigger::RateLimited),
            "denied" => Some(BanTrigger::Denied),
            "contract_violations" => {
                d.err(n.pos, &p, "contract validation is not supported yet in this version of Portcullis");
                None
            }
            other => {
                d.err(
                    n.pos,
                    &p,
                    format!("unknown event `{other}`; expected auth_failures, not_found, rate_limited or denied"),
                );
                None
            }
        }),
        None => {
            d.err(node.pos, &join(path, "on"), "missing field `on` (auth_failures, not_found, rate_limited, denied)");
            None
        }
    };
    let threshold = match f.get("threshold") {
        Some((n, p)) => integer(d, n, &p, 1, 1_000_000).map(|v| v as u32),
        None => {
            d.err(node.pos, &join(path, "threshold"), "missing field `threshold`");
            None
        }
    };
    let mut bounded = |d: &mut Decoder<'_>, key: &'static str, max: Duration| match f.get(key) {
        Some((n, p)) => duration(d, n, &p).and_then(|v| {
            if v > max {
                d.err(n.pos, &p, format!("at most {}s", max.as_secs()));
                return None;
            }
            Some(Some(v))
        }),
        None => Some(None),
    };
    let window = bounded(d, "window", MAX_WINDOW);
    let ban_for = bounded(d, "ban_for", MAX_BAN);
    let max_ban_for = bounded(d, "max_ban_for", MAX_BAN);
    let key = match f.get("key") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| match s {
            "ip" => Some(BanKeyKind::Ip),
            "consumer" => Some(BanKeyKind::Consumer),
            other => {
                d.err(n.pos, &p, format!("unknown key `{other}`; expected ip or consumer"));
                None
            }
        }),
        None => Some(BanKeyKind::Ip),
    };
    let mut max_keys = 100_000;
    if let Some((n, p)) = f.get("max_keys")
        && let Some(v) = integer(d, n, &p, 16, 10_000_000)
    {
        max_keys = v as usize;
    }
    f.finish(d);
    let (window, ban_for, max_ban_for) = (window?, ban_for?, max_ban_for?);
    let (on, key) = (on?, key?);
    if window.is_none() {
        d.err(node.pos, &join(path, "window"), "missing field `window` (like 1m)");
    }
    let Some(ban_for) = ban_for else {
        d.err(node.pos, &join(path, "ban_for"), "missing field `ban_for` (like 15m)");
        return None;
    };
    if key == BanKeyKind::Consumer && on == BanTrigger::AuthFailures {
        d.err(
            node.pos,
            &join(path, "key"),
            "a failed authentication has no consumer; count `auth_failures` by `key: ip`",
        );
    }
    if let Some(m) = max_ban_for
        && m < ban_for
    {
        d.err(node.pos, &join(path, "max_ban_for"), "must be at least `ban_for`");
    }
    let max_ban_for = max_ban_for.unwrap_or(Duration::from_secs(24 * 3600)).max(ban_for);
    Some(BanRule { on, threshold: threshold?, window: window?, ban_for, max_ban_for, key, max_keys })
}

pub(super) fn decode_quota(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<QuotaConfig> {
    let mut f = Fields::new(d, node, path)?;
    let key = match f.get("key") {
        Some((n, p)) => rate_key(d, n, &p),
        None => Some(RateKey::Consumer),
    };
    let limit = match f.get("limit") {
        Some((n, p)) => integer(d, n, &p, 1, 1_000_000_000_000),
        None => {
            d.err(node.pos, &join(path, "limit"), "missing field `limit` (requests per period)");
            None
        }
    };
    let period = match f.get("period") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| match s {
            "day" => Some(QuotaPeriod::Day),
            "month" => Some(QuotaPeriod::Month),
            other => {
                d.err(n.pos, &p, format!("unknown period `{other}`; expected day or month"));
                None
            }
        }),
        None => {
            d.err(node.pos, &join(path, "period"), "missing field `period` (day or month)");
            None
        }
    };
    let mut max_keys = 100_000;
    if let Some((n, p)) = f.get("max_keys")
        && let Some(v) = integer(d, n, &p, 16, 10_000_000)
    {
        max_keys = v as usize;
    }
    f.finish(d);
    Some(QuotaConfig { key: key?, limit: limit?, period: period?, max_keys })
}

pub(super) fn decode_cluster(d: &mut Decoder<'_>, node: &Node, path: &str) -> Option<ClusterConfig> {
    let mut f = Fields::new(d, node, path)?;
    let redis = match f.get("redis") {
        Some((n, p)) => scalar(d, n, &p).and_then(|s| {
            if s.starts_with("rediss://") {
                d.err(n.pos, &p, "Redis over TLS (rediss://) is not supported yet in this version of Portcullis");
                return None;
            }
            let ok = s.starts_with("redis://") && redis::Client::open(s).is_ok();
            if !ok {
                // Never echo the value: it may hold a password.
                d.err(n.pos, &p, "expected a URL like redis://127.0.0.1:6379 or redis://:PASSWORD@HOST:PORT/DB");
                return None;
            }
            Some(s.to_string())
        }),
        None => {
            d.err(node.pos, &join(path, "redis"), "missing field `redis` (like redis://127.0.0.1:6379)");
            None
        }
    };
    let mut redis_failure = RedisFailure::Local;
    if let Some((n, p)) = f.get("redis_failure")
        && let Some(v) = scalar(d, n, &p)
    {
        match v {
            "local" => redis_failure = RedisFailure::Local,
            "closed" => redis_failure = RedisFailure::Closed,
            other => d.err(n.pos, &p, format!("unknown value `{other}`; expected local or closed")),
        }
    }
    let mut redis_timeout = Duration::from_millis(50);
    if let Some((n, p)) = f.get("redis_timeout")
        && let Some(v) = duration(d, n, &p)
    {
        if v > Duration::from_secs(5) {
            d.err(n.pos, &p, "at most 5s: every rate-limited request waits for it");
        } else {
            redis_timeout = v;
        }
    }
    f.finish(d);
    Some(ClusterConfig { redis: redis?, redis_failure, redis_timeout })
}
