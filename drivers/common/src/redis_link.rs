//! The Redis link of the async drivers (tokio, smol): runs the [`Store`]'s pipelines, one at a
//! time, on a multiplexed connection that is made again after a failure. The `redis` crate
//! picks the runtime it is called on; the driver enables that runtime's feature.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::store::{
    connection_broken, read_memory_info, worker_token, RedisOptions, Store, StoreError,
};
use crate::Frontier;
use downpour::Request;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};

type Reply = (RedisResult<Vec<Value>>, Option<MultiplexedConnection>);

/// The connection a [`Frontier`]'s store runs its pipelines on.
pub struct Link {
    client: redis::Client,
    config: AsyncConnectionConfig,
    connection: Option<MultiplexedConnection>,
    running: Option<Pin<Box<dyn Future<Output = Reply> + Send>>>,
}

impl Link {
    /// A store with these options, and its link. Connects once, so that a wrong URL or an
    /// unreachable server is reported at start.
    pub async fn connect<R: Request>(
        options: RedisOptions,
    ) -> Result<(Store<R>, Link), StoreError> {
        // The options are checked before anything is tried.
        let store = Store::new(options.clone(), worker_token())?;
        let client = options.client()?;
        let timeout = options.command_timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| options.unreachable(e))?;
        // A Redis that evicts keys when full can drop a crawl's requests: said at start.
        let mut info = redis::cmd("INFO");
        info.arg("memory");
        let info = info.query_async::<String>(&mut connection).await;
        // Made again for the first pipeline if the INFO broke it.
        let connection = read_memory_info(&options.url, info).then_some(connection);
        let link = Link {
            client,
            config,
            connection,
            running: None,
        };
        Ok((store, link))
    }

    /// Starts the store's next pipeline, if it has one and none is running.
    pub fn start<R: Request>(&mut self, frontier: &mut Frontier<R>) {
        if self.running.is_some() {
            return;
        }
        let Some(pipeline) = frontier.poll_pipeline(Instant::now()) else {
            return;
        };
        let connection = self.connection.take();
        let client = self.client.clone();
        let config = self.config.clone();
        self.running = Some(Box::pin(async move {
            let mut connection = match connection {
                Some(c) => c,
                None => match client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => return (Err(e), None),
                },
            };
            let reply = pipeline.query_async::<Vec<Value>>(&mut connection).await;
            // A connection that failed is made again for the next pipeline.
            let keep = !reply.as_ref().is_err_and(connection_broken);
            (reply, keep.then_some(connection))
        }));
    }

    /// The running pipeline's reply, once it is there: for [`Frontier::handle_reply`].
    pub fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<RedisResult<Vec<Value>>> {
        let Some(running) = &mut self.running else {
            return Poll::Pending;
        };
        let (reply, connection) = std::task::ready!(running.as_mut().poll(cx));
        self.running = None;
        self.connection = connection;
        Poll::Ready(reply)
    }

    /// Whether a pipeline is running.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}
