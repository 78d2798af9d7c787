//! A TCP proxy the test controls, to take a dependency away (a database "going down") without
//! touching the shared server behind it.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards every connection made to `address` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                pipes.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { address, task }
    }

    /// Closes the listener and every forwarded connection: the target is gone for the client.
    pub async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
