//! `sluice dev --demo`: the seed example of DESIGN.md §2 serves its five routes and the TCP echo.

use std::time::Duration;

use sluice_e2e::{cli, cli_in, eventually, free_addr, http_get, Sluice};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_seed_routes_and_tcp_echo() {
    let (http, tcp) = (free_addr(), free_addr());
    let extra: Vec<String> =
        ["--demo", "--demo-http-addr", &http.to_string(), "--demo-tcp-addr", &tcp.to_string()].map(String::from).into();
    let dev = Sluice::dev(BIN, &extra).await;

    let cases = [
        ("/api/orders", "api-"),
        ("/login", "auth-"),
        ("/products", "products-"),
        ("/images/logo.png", "media-"),
        ("/admin", "admin-"),
    ];
    for (path, service) in cases {
        let body = eventually(Duration::from_secs(30), &format!("myshop.com{path} to answer"), || async move {
            match http_get(http, "myshop.com", path).await {
                Some((200, body)) => Some(body),
                _ => None,
            }
        })
        .await;
        assert!(body.starts_with(service), "{path}: {body:?}");
    }

    // Each service is a cluster of two backends, balanced round robin.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (status, body) = http_get(http, "myshop.com", "/api/x").await.unwrap();
        assert_eq!(status, 200);
        seen.insert(body.trim().to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["api-1", "api-2"]);

    // /login is sticky: the cookie keeps a client on the backend that served it first.
    let web = reqwest::Client::new();
    let first = web.get(format!("http://{http}/login")).header("host", "myshop.com").send().await.unwrap();
    let cookie = first.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("sluice_sticky="), "{cookie}");
    let pinned = first.text().await.unwrap();
    for _ in 0..6 {
        let r = web.get(format!("http://{http}/login")).header("host", "myshop.com").header("cookie", &cookie);
        assert_eq!(r.send().await.unwrap().text().await.unwrap(), pinned);
    }

    assert_eq!(http_get(http, "other.example", "/api/x").await.map(|r| r.0), Some(404), "other hosts match nothing");
    assert_eq!(http_get(http, "myshop.com", "/login/extra").await.map(|r| r.0), Some(404), "/login is exact");

    let stream = TcpStream::connect(tcp).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(greeting == "echo-1" || greeting == "echo-2", "{greeting:?}");
    write.write_all(b"ping\n").await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert_eq!(echoed, "ping");

    let out = cli(BIN, dev.api_addr.unwrap(), &["get", "routes"]).await;
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 6, "a header and five routes: {out:?}");
    assert!(dev.log().contains("curl -H 'Host: myshop.com'"), "{}", dev.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_generates_a_token_that_client_commands_find() {
    // An empty SLUICE_ADMIN_TOKEN counts as unset.
    let (api, grpc, admin) = (free_addr(), free_addr(), free_addr());
    let args: Vec<String> =
        ["dev", "--api-addr", &api.to_string(), "--grpc-addr", &grpc.to_string(), "--admin-addr", &admin.to_string()]
            .map(String::from)
            .into();
    let dev = Sluice::spawn(BIN, "dev-token", &args, &[("SLUICE_ADMIN_TOKEN", "")]);
    let token_file = dev.dir().join(".sluice/admin-token");
    let token = eventually(Duration::from_secs(60), "the admin token file", || {
        let f = token_file.clone();
        async move { std::fs::read_to_string(f).ok().filter(|t| !t.trim().is_empty()) }
    })
    .await;
    let token = token.trim().to_string();
    eventually(Duration::from_secs(30), "the banner to show the token", || {
        let shown = dev.log().contains(&token);
        async move { shown.then_some(()) }
    })
    .await;

    // From the dev's directory, without SLUICE_TOKEN, the client reads ./.sluice/admin-token.
    let url = format!("http://{api}");
    let out = eventually(Duration::from_secs(30), "sluice status to succeed", || {
        let (dir, url) = (dev.dir().to_path_buf(), url.clone());
        async move {
            let out = cli_in(BIN, &dir, &["status"], &[("SLUICE_API_URL", &url)]).await;
            out.success().then_some(out)
        }
    })
    .await;
    assert!(out.stdout.starts_with("revision "), "{out:?}");
}
