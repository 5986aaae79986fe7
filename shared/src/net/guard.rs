//! The network guard (SSRF): which addresses outbound requests may reach.
//!
//! Names are resolved by [`GuardedResolver`], which hands the HTTP client only
//! permitted addresses, so the check applies to the address actually
//! connected to (no DNS-rebinding gap). Literal IPs in URLs never reach a
//! resolver and are checked by [`NetPolicy::check_url`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The origin a download goes to, as the guard sees it: scheme, host and
/// port, lower-cased, with the scheme's default port left out
/// (`https://img.example.com`, `http://127.0.0.1:8080`). `None` for what
/// is not an http(s) URL (it fails before any connection).
pub fn origin_of(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.host_str()?;
    Some(url.origin().ascii_serialization().to_ascii_lowercase())
}

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host} resolves to {ip}, a {kind} address; requests to private networks are refused")]
pub struct Blocked {
    pub host: String,
    pub ip: IpAddr,
    pub kind: &'static str,
}

/// What the guard lets through.
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    /// `ALLOW_PRIVATE_NETWORKS=true`: the guard is off.
    pub allow_private: bool,
    /// Individual private endpoints let through even with the guard on
    /// (the local runner's own example server).
    pub exempt: Vec<SocketAddr>,
}

impl NetPolicy {
    /// Checks a URL whose host is a literal IP address. Hostnames pass here
    /// and are checked when resolved.
    pub fn check_ip_literal(&self, url: &Url) -> Result<(), Blocked> {
        if self.allow_private {
            return Ok(());
        }
        let ip = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        let port = url.port_or_known_default().unwrap_or(0);
        if self.exempt.contains(&SocketAddr::new(ip, port)) {
            return Ok(());
        }
        match blocked_kind(ip) {
            Some(kind) => Err(Blocked {
                host: url.host_str().unwrap_or_default().to_owned(),
                ip,
                kind,
            }),
            None => Ok(()),
        }
    }
}

/// The kind of a non-public address, or `None` for a public one.
pub fn blocked_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified",
        (127, ..) => "loopback",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (CGNAT)",
        (192, 0, 0) => "IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let s = ip.segments();
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) embed an IPv4 address.
        [0, 0, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            return v4_kind(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
        }
        // 6to4 (2002:a.b.c.d::/48) embeds one too.
        [0x2002, hi, lo, ..] => {
            return v4_kind(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
        }
        [x, ..] if x & 0xfe00 == 0xfc00 => "unique-local",
        [x, ..] if x & 0xffc0 == 0xfe80 => "link-local",
        [x, ..] if x & 0xffc0 == 0xfec0 => "site-local",
        [x, ..] if x & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0xdb8, ..] => "documentation",
        _ => return None,
    })
}

/// How names become addresses. The system resolver in production; tests
/// substitute their own to prove what happens to a name that resolves to
/// a private address.
pub trait NameLookup: Send + Sync + 'static {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver.
pub struct SystemLookup;

impl NameLookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A resolver for the HTTP client that drops every refused address.
pub struct GuardedResolver {
    lookup: Arc<dyn NameLookup>,
    policy: Arc<NetPolicy>,
}

impl GuardedResolver {
    pub fn new(lookup: Arc<dyn NameLookup>, policy: Arc<NetPolicy>) -> Self {
        Self { lookup, policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let ips = lookup.lookup(host.clone()).await?;
            let mut allowed = Vec::new();
            let mut first_blocked = None;
            for ip in ips {
                match blocked_kind(ip) {
                    Some(kind) if !policy.allow_private => {
                        first_blocked.get_or_insert(Blocked {
                            host: host.clone(),
                            ip,
                            kind,
                        });
                    }
                    _ => allowed.push(SocketAddr::new(ip, 0)),
                }
            }
            if allowed.is_empty() {
                if let Some(blocked) = first_blocked {
                    return Err(Box::new(blocked) as Box<dyn std::error::Error + Send + Sync>);
                }
                return Err(format!("{host} has no address").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        NetPolicy::default()
            .check_ip_literal(&Url::parse(url).unwrap())
            .is_err()
    }

    #[test]
    fn the_origin_is_scheme_host_and_port_lower_cased() {
        let o = |u: &str| origin_of(u);
        assert_eq!(
            o("https://IMG.Example.COM/a/b.jpg?x=1").as_deref(),
            Some("https://img.example.com")
        );
        assert_eq!(
            o("https://img.example.com:443/a.jpg"),
            o("https://img.example.com/b.jpg")
        );
        assert_eq!(
            o("http://127.0.0.1:8080/a.jpg").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_ne!(
            o("http://img.example.com/a.jpg"),
            o("https://img.example.com/a.jpg")
        );
        assert_ne!(
            o("https://img.example.com:8443/a.jpg"),
            o("https://img.example.com/a.jpg")
        );
        assert_eq!(o("http://2130706433/"), o("http://127.0.0.1/"));
        for not_http in [
            "ftp://example.com/a.jpg",
            "file:///etc/passwd",
            "not a url",
            "",
        ] {
            assert_eq!(o(not_http), None, "{not_http}");
        }
    }

    #[test]
    fn literal_private_addresses_in_every_spelling_are_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://user@127.0.0.1/",
            "http://example.com@127.0.0.1:8080/",
        ] {
            assert!(refused(url), "{url} must be refused");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_literal_check() {
        for url in [
            "http://8.8.8.8/",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://[2606:4700::1]/",
            "https://example.com/a.jpg",
            "http://127.0.0.1@example.com/",
        ] {
            assert!(!refused(url), "{url} must pass");
        }
    }

    #[test]
    fn the_switch_and_exemptions_let_private_addresses_through() {
        let open = NetPolicy {
            allow_private: true,
            exempt: vec![],
        };
        assert!(
            open.check_ip_literal(&Url::parse("http://127.0.0.1/").unwrap())
                .is_ok()
        );
        let exempt = NetPolicy {
            allow_private: false,
            exempt: vec!["127.0.0.1:8765".parse().unwrap()],
        };
        assert!(
            exempt
                .check_ip_literal(&Url::parse("http://127.0.0.1:8765/a.jpg").unwrap())
                .is_ok()
        );
        assert!(
            exempt
                .check_ip_literal(&Url::parse("http://127.0.0.1:8766/a.jpg").unwrap())
                .is_err()
        );
    }

    struct Fixed(Vec<IpAddr>);
    impl NameLookup for Fixed {
        fn lookup(
            &self,
            _: String,
        ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
            let ips = self.0.clone();
            Box::pin(async move { Ok(ips) })
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_private_addresses_and_refuses_when_none_remain() {
        let policy = Arc::new(NetPolicy::default());
        let mixed = GuardedResolver::new(
            Arc::new(Fixed(vec![
                "127.0.0.1".parse().unwrap(),
                "93.184.215.14".parse().unwrap(),
            ])),
            policy.clone(),
        );
        let addrs: Vec<SocketAddr> = mixed
            .resolve("example.com".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec!["93.184.215.14:0".parse().unwrap()]);

        let private =
            GuardedResolver::new(Arc::new(Fixed(vec!["10.0.0.1".parse().unwrap()])), policy);
        let err = match private.resolve("internal.example".parse().unwrap()).await {
            Ok(_) => panic!("a name resolving only to private addresses must be refused"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<Blocked>().is_some(), "{err}");
    }
}
