using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>A memory server that dies (its connection gone, as with SIGKILL) and comes back: its
/// senders learn at once what it no longer holds, instead of waiting for replies that cannot come, and
/// it leaves no queues behind.</summary>
public class ServerRestartTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Opaque records, as a memory server sees them (it never opens one).</summary>
    private static List<PageRecord> Pages(int count) =>
        [.. Enumerable.Range(0, count).Select(i => new PageRecord(PageClass.Plain, (ulong)i, 1, 0, new byte[PageRecord.BodySize(PageClass.Plain)]))];

    private Task<IConnection> ConnectAsync() => new ConnectionFactory { Uri = rabbit.Uri, ClientProvidedName = "restart test" }.CreateConnectionAsync(Ct);

    [Fact]
    public async Task A_restarted_in_memory_server_refuses_at_once_the_VM_it_lost_and_its_queues_are_gone()
    {
        var host = rabbit.Name("sub-restart");
        var vm = Guid.NewGuid();
        await using var client = await PageClient.CreateAsync(rabbit.Connection, Ct);
        var first = await ConnectAsync();
        var server = await PageServer.StartAsync(first, new MemoryServerOptions { Host = host, CapacityPages = 1000, AllowVmsWithoutCapability = true }, new InMemoryPageStore(1000), NullLogger.Instance, Ct);
        await client.StartVmAsync(host, vm, MigrationMode.Semigrate, ct: Ct);
        await client.StoreAsync(host, vm, Pages(8), Ct);

        await first.AbortAsync(Ct); // the process dies: the broker drops its connection
        await using var second = await ConnectAsync();
        await using var restarted = await PageServer.StartAsync(second, new MemoryServerOptions { Host = host, CapacityPages = 1000, AllowVmsWithoutCapability = true }, new InMemoryPageStore(1000),
            NullLogger.Instance, Ct);

        // Not a timeout (60 s): the broker has no queue for the VM any more, and says so at once.
        var store = await Assert.ThrowsAsync<PageProtocolException>(() => client.StoreAsync(host, vm, Pages(8), Ct));
        Assert.Equal(PageError.UnknownVm, store.Code);
        var release = await Assert.ThrowsAsync<PageProtocolException>(() => client.ReleaseAsync(host, vm, Ct));
        Assert.Equal(PageError.UnknownVm, release.Code);
        Assert.Empty((await client.UsageAsync(host, Ct)).PagesPerVm);
        foreach (var queue in new[] { PageQueues.Bulk(host, vm), PageQueues.Fetch(host, vm) })
        {
            await using var channel = await rabbit.Connection.CreateChannelAsync(cancellationToken: Ct);
            var gone = await Assert.ThrowsAsync<OperationInterruptedException>(() => channel.QueueDeclarePassiveAsync(queue, Ct));
            Assert.Equal((ushort)404, gone.ShutdownReason?.ReplyCode);
        }

        // Started again, the VM is served again from nothing.
        await client.StartVmAsync(host, vm, MigrationMode.Semigrate, ct: Ct);
        await client.StoreAsync(host, vm, Pages(8), Ct);
        Assert.Equal(8, (await client.UsageAsync(host, Ct)).PagesPerVm[vm]);
        await server.DisposeAsync();
    }

    [Fact]
    public async Task Stores_lost_with_a_dead_servers_queue_fail_once_a_later_probe_is_answered_and_a_file_store_keeps_the_rest()
    {
        var host = rabbit.Name("sub-probe");
        var vm = Guid.NewGuid();
        var folder = Directory.CreateTempSubdirectory("semigrate-probe-");
        try
        {
            using (var kept = new FilePageStore(folder.FullName, 1000))
            {
                kept.Put(vm, Pages(4)); // what the server stored, and acked, before it died
            }
            await using var client = await PageClient.CreateAsync(rabbit.Connection, Ct);
            // Twice on the same queue: a probe is sent again whenever requests go unanswered again.
            for (var cycle = 1; cycle <= 2; cycle++)
            {
                client.ProbeAfter = TimeSpan.FromHours(1); // not while the host is down: that probe would find no queue (the other test)

                // The dying server's queue, with a store in it that it never handled.
                var dying = await ConnectAsync();
                await using (var channel = await dying.CreateChannelAsync(cancellationToken: Ct))
                {
                    await channel.QueueDeclareAsync(PageQueues.Bulk(host, vm), durable: false, exclusive: true, autoDelete: false, cancellationToken: Ct);
                }
                var batch = new PageBatch(64 << 10);
                foreach (var page in Pages(8))
                {
                    batch.Advance(PageFrame.WritePage(batch.Next, page));
                }
                var stored = await client.PublishStoreAsync(host, vm, batch, Ct);
                await dying.AbortAsync(Ct);

                // Back with its file store: it serves the VM again at once, without the store that was lost.
                var connection = await ConnectAsync();
                var store = new FilePageStore(folder.FullName, 1000);
                var restarted = await PageServer.StartAsync(connection, new MemoryServerOptions { Host = host, CapacityPages = 1000, AllowVmsWithoutCapability = true }, store, NullLogger.Instance, Ct);
                client.ProbeAfter = TimeSpan.FromMilliseconds(300);
                var lost = await Assert.ThrowsAsync<PageProtocolException>(() => stored);
                Assert.Equal(PageError.Internal, lost.Code);
                Assert.Contains("request lost", lost.Message, StringComparison.Ordinal);
                Assert.Equal(cycle == 1 ? 4 : 8, (await client.UsageAsync(host, Ct)).PagesPerVm[vm]);
                await client.StoreAsync(host, vm, Pages(8), Ct); // sent again
                Assert.Equal(8, (await client.UsageAsync(host, Ct)).PagesPerVm[vm]);
                if (cycle == 2)
                {
                    await client.ReleaseAsync(host, vm, Ct);
                }
                await connection.AbortAsync(Ct); // it dies again (its queues with it)
                await restarted.DisposeAsync();
                store.Dispose();
            }
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }
}
