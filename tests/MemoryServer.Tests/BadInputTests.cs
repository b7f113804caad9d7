using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.TestSupport;

namespace SEmigrate.MemoryServer.Tests;

/// <summary>Bad requests get a clear error (or a dead-letter with the reason) and cost nothing: the
/// memory server keeps serving, and what it stored stays stored.</summary>
public class BadInputTests(RabbitMqFixture rabbit) : IClassFixture<RabbitMqFixture>
{
    /// <summary>Publishes raw bytes to a queue and returns the reply (direct reply-to).</summary>
    private async Task<byte[]> RawRequestAsync(string queue, byte[] body)
    {
        await using var channel = await rabbit.Connection.CreateChannelAsync();
        var reply = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += (_, d) =>
        {
            reply.TrySetResult(d.Body.ToArray());
            return Task.CompletedTask;
        };
        await channel.BasicConsumeAsync("amq.rabbitmq.reply-to", autoAck: true, consumer);
        await channel.BasicPublishAsync("", queue, mandatory: false,
            new BasicProperties { ReplyTo = "amq.rabbitmq.reply-to", CorrelationId = "1" }, body);
        return await reply.Task.WaitAsync(TimeSpan.FromSeconds(10));
    }

    private static (PageError Code, string Message) Error(byte[] reply)
    {
        Assert.Equal(FrameKind.Error, PageFrame.Parse(reply).Kind);
        return PageFrame.ReadError(reply);
    }

    [Fact]
    public async Task Malformed_truncated_oversized_and_misdirected_requests_get_clear_errors_and_lose_nothing()
    {
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate);
        await h.TransferAsync();
        var bulk = PageQueues.Bulk(h.Host, h.Vm);

        var garbage = Error(await RawRequestAsync(bulk, "hello, memory server"u8.ToArray()));
        Assert.Equal(PageError.Malformed, garbage.Code);
        Assert.Contains("shorter than its 36-byte header", garbage.Message, StringComparison.Ordinal);

        var record = h.Codec.Encode(1, 1, PageClass.Plain, new byte[4096]);
        var truncated = PageFrame.BuildPages(FrameKind.Store, h.Vm, 9, [record, record])[..^100];
        Assert.Equal((PageError.Malformed, "page record 1 of 2 is truncated"), Error(await RawRequestAsync(bulk, truncated)));

        var oversized = new byte[PageFrame.MaxSize + 1];
        PageFrame.WriteHeader(oversized, FrameKind.Store, h.Vm, 10, 1);
        Assert.Contains("exceeds", Error(await RawRequestAsync(bulk, oversized)).Message, StringComparison.Ordinal);

        var wrongVm = PageFrame.BuildFetch(Guid.NewGuid(), 11, [1UL]);
        Assert.Contains("arrived on VM", Error(await RawRequestAsync(bulk, wrongVm)).Message, StringComparison.Ordinal);

        // A VM's request on the control queue (which names no capability) reaches no VM, known or not.
        foreach (var vm in new[] { Guid.NewGuid(), h.Vm })
        {
            var misdirected = Error(await RawRequestAsync(PageQueues.Control(h.Host), PageFrame.BuildFetch(vm, 12, [1UL])));
            Assert.Equal(PageError.Forbidden, misdirected.Code);
            Assert.EndsWith("the control queue takes StartVm and Usage only, not Fetch: a VM's requests go to its own queues", misdirected.Message, StringComparison.Ordinal);
        }

        var badVersion = PageFrame.BuildFetch(h.Vm, 13, [1UL]);
        badVersion[4] = 9;
        Assert.Contains("version 9 is not supported", Error(await RawRequestAsync(bulk, badVersion)).Message, StringComparison.Ordinal);

        var unknownPage = await Assert.ThrowsAsync<PageProtocolException>(() => h.Client.FetchAsync(h.Host, h.Vm, [999UL]));
        Assert.Equal(PageError.UnknownPage, unknownPage.Code);
        Assert.Contains("page 0x3e7", unknownPage.Message, StringComparison.Ordinal);

        // Nothing was lost and the server still serves.
        var page = new byte[4096];
        for (ulong pfn = 0; pfn < PagingHarness.Pages; pfn++)
        {
            await h.Pager.PageInAsync(pfn, page);
            Assert.Equal(PagingHarness.GuestPage(pfn).Bytes, page);
        }
    }

    [Fact]
    public async Task Store_acks_come_coalesced_each_request_acked_once_with_its_page_count()
    {
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate);
        await using var channel = await rabbit.Connection.CreateChannelAsync();
        var replies = System.Threading.Channels.Channel.CreateUnbounded<byte[]>();
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += (_, d) =>
        {
            replies.Writer.TryWrite(d.Body.ToArray());
            return Task.CompletedTask;
        };
        await channel.BasicConsumeAsync("amq.rabbitmq.reply-to", autoAck: true, consumer);
        const int stores = 40;
        for (var i = 0; i < stores; i++)
        {
            var pages = Enumerable.Range(0, i % 5 + 1).Select(p => h.Codec.Encode((ulong)(i * 8 + p), 1, PageClass.Plain, new byte[4096])).ToList();
            await channel.BasicPublishAsync("", PageQueues.Bulk(h.Host, h.Vm), mandatory: false,
                new BasicProperties { ReplyTo = "amq.rabbitmq.reply-to", CorrelationId = $"{1000 + i}" }, PageFrame.BuildPages(FrameKind.Store, h.Vm, (ulong)(1000 + i), pages));
        }

        var acked = new Dictionary<ulong, int>();
        var messages = 0;
        while (acked.Count < stores)
        {
            var reply = await replies.Reader.ReadAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10));
            messages++;
            foreach (var (id, pages) in PageFrame.ReadStoreAcks(reply))
            {
                Assert.True(acked.TryAdd(id, pages), $"request {id} acked twice");
            }
        }
        Assert.Equal(Enumerable.Range(0, stores).Select(i => (1000UL + (ulong)i, i % 5 + 1)), acked.Select(kv => (kv.Key, kv.Value)).Order());
        Assert.InRange(messages, stores / 8, stores / 2); // at most 8 acks to a reply; 40 quick stores share replies
        Assert.Equal(8 * (1 + 2 + 3 + 4 + 5), (await h.Client.UsageAsync(h.Host)).PagesPerVm[h.Vm]);
    }

    [Fact]
    public async Task A_bad_request_without_a_reply_address_is_dead_lettered_with_its_reason()
    {
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate);
        await using var channel = await rabbit.Connection.CreateChannelAsync();
        await channel.BasicPublishAsync("", PageQueues.Bulk(h.Host, h.Vm), "junk"u8.ToArray());
        BasicGetResult? dead = null;
        for (var i = 0; i < 100 && dead is null; i++)
        {
            dead = await channel.BasicGetAsync(h.Server.DeadLetterQueue, autoAck: true);
            if (dead is null)
            {
                await Task.Delay(50);
            }
        }
        Assert.NotNull(dead);
        Assert.Equal("junk"u8.ToArray(), dead.Body.ToArray());
        var reason = System.Text.Encoding.UTF8.GetString((byte[])dead.BasicProperties.Headers!["x-semigrate-error"]!);
        Assert.StartsWith("Malformed: frame of 4 bytes", reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_full_store_refuses_the_batch_whole_keeps_what_it_has_and_duplicates_are_harmless()
    {
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate, new InMemoryPageStore(40));
        var records = Enumerable.Range(0, 48).Select(p => h.Codec.Encode((ulong)p, 1, PageClass.Plain, PagingHarness.GuestPage((ulong)p).Bytes)).ToList();
        foreach (var r in records)
        {
            h.Table.Set(r.Pfn, PageClass.Plain, 1);
        }
        await h.Client.StoreAsync(h.Host, h.Vm, records[..32]);
        await h.Client.StoreAsync(h.Host, h.Vm, records[..32]); // again: idempotent
        Assert.Equal(32, (await h.Client.UsageAsync(h.Host)).UsedPages);

        var full = await Assert.ThrowsAsync<PageProtocolException>(() => h.Client.StoreAsync(h.Host, h.Vm, records[24..48]));
        Assert.Equal(PageError.StoreFull, full.Code);
        Assert.Contains("store full: 32 of 40 pages stored or reserved, 16 more needed", full.Message, StringComparison.Ordinal);
        Assert.Equal(32, (await h.Client.UsageAsync(h.Host)).UsedPages);
        var page = new byte[4096];
        await h.Pager.PageInAsync(31, page);
        Assert.Equal(PagingHarness.GuestPage(31).Bytes, page);
        await Assert.ThrowsAsync<PageProtocolException>(() => h.Client.FetchAsync(h.Host, h.Vm, [40UL]));
    }

    [Fact]
    public async Task A_host_that_is_not_there_fails_at_once_and_a_dead_one_times_out_naming_it()
    {
        await using var client = await PageClient.CreateAsync(rabbit.Connection);
        var nowhere = await Assert.ThrowsAsync<PageProtocolException>(() => client.StartVmAsync("no-such-host", Guid.NewGuid(), MigrationMode.Semigrate));
        Assert.Contains("no queue semigrate.pages.no-such-host", nowhere.Message, StringComparison.Ordinal);

        var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate);
        await h.TransferAsync();
        await h.Server.DisposeAsync(); // the process dies; its queues stay behind
        await using var impatient = await PageClient.CreateAsync(rabbit.Connection);
        impatient.FetchTimeout = TimeSpan.FromSeconds(1);
        var dead = await Assert.ThrowsAsync<PageProtocolException>(() => impatient.FetchAsync(h.Host, h.Vm, [1UL]));
        Assert.Contains($"{h.Host}: Internal: no reply within 1 s", dead.Message, StringComparison.Ordinal);
        await h.DisposeAsync();
    }

    [Fact]
    public async Task A_semigrate_memory_server_has_no_key_option_and_refuses_a_key_yet_serves_page_in()
    {
        Assert.DoesNotContain(typeof(MemoryServerOptions).GetProperties(),
            p => p.Name.Contains("key", StringComparison.OrdinalIgnoreCase) || p.PropertyType == typeof(byte[]));
        await using var h = await PagingHarness.StartAsync(rabbit, MigrationMode.Semigrate);
        var refused = await Assert.ThrowsAsync<PageProtocolException>(() => h.Client.SendChannelKeyAsync(h.Host, h.Vm, new byte[100]));
        Assert.Equal(PageError.Unsupported, refused.Code);
        Assert.Contains("takes no key", refused.Message, StringComparison.Ordinal);
        await h.TransferAsync();
        var page = new byte[4096];
        await h.Pager.PageInAsync(2, page);
        Assert.Equal(PagingHarness.GuestPage(2).Bytes, page);
    }
}
