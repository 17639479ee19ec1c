//! The CRMs' APIs are HTTPS: the clients' HTTP stack must speak TLS (it once was built
//! without, and only the emulators' plain HTTP was ever called).

use std::time::Duration;

#[tokio::test]
async fn https_urls_are_dialled_with_a_tls_handshake() {
    // A server that is not TLS: the handshake fails, which only a TLS client attempts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n\r\nnot tls").await;
        }
    });
    let err = reqwest::Client::new()
        .get(format!("https://127.0.0.1:{port}/crm/v3/objects/contacts"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    // Without TLS the dial stops at "invalid URL, scheme is not http"; with it, rustls
    // reads the plain answer as a bad TLS record.
    let text = format!("{err:?}");
    assert!(!text.contains("scheme is not http"), "no TLS: {text}");
    assert!(text.contains("InvalidContentType"), "{text}");
}
