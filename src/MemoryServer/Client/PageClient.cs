using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using RabbitMQ.Client.Exceptions;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Client;

/// <summary>The requesting end of the page protocol (source and main host). Bulk requests (store,
/// page-out, release) go on a channel with publisher confirms; page-in on its own channel without
/// them, for latency. Replies come by direct reply-to; the memory server acks several stores in one
/// StoreAcks reply. Every request is mandatory-routed: no queue (host down, VM not started) fails at
/// once; no reply in time fails with the host named. A request to a VM's queue still unanswered after
/// <see cref="ProbeAfter"/> is probed: an empty store sent behind it on the same queue. The queue is
/// first in, first out, so an answered probe means the requests ahead of it were lost (the memory
/// server died with them and came back): they fail within a second, to be sent again; a probe with no
/// queue means the host no longer serves the VM: every request to that queue fails at once.</summary>
public sealed class PageClient : IAsyncDisposable
{
    private const string ReplyTo = "amq.rabbitmq.reply-to";
    private readonly IChannel bulk;
    private readonly IChannel fetch;
    private readonly ConcurrentDictionary<ulong, Pending> pending = new();
    private readonly ConcurrentDictionary<string, long> probing = new(StringComparer.Ordinal);
    private readonly Timer deadlines;
    private long nextRequest;

    /// <summary>A request waiting for its reply, until <see cref="Deadline"/> (Environment.TickCount64).
    /// <see cref="Vm"/> is set for a request to a VM's bulk queue, which may be probed once the broker
    /// has taken it (<see cref="PublishedAt"/>); <see cref="Lost"/>, once a probe behind it was answered.</summary>
    private sealed record Pending(TaskCompletionSource<byte[]> Reply, string Host, string Queue, Guid? Vm, TimeSpan Timeout)
    {
        public long Deadline { get; set; }

        public long PublishedAt { get; set; }

        public string? Lost { get; set; }
    }

    /// <summary>How long a request found lost may still be answered: a reply on another of the server's
    /// channels (an error, a page-out's ack) may overtake the probe's.</summary>
    private const long LostGraceMs = 1000;

    public TimeSpan BulkTimeout { get; set; } = TimeSpan.FromSeconds(60);

    public TimeSpan FetchTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long a bulk request may wait for its reply before its queue is probed (see above).</summary>
    public TimeSpan ProbeAfter { get; set; } = TimeSpan.FromSeconds(2);

    private PageClient(IChannel bulk, IChannel fetch)
    {
        this.bulk = bulk;
        this.fetch = fetch;
        // One timer for every request's deadline: a timer per request (WaitAsync with a timeout) cost
        // the bulk path more than the rest of a request's bookkeeping together.
        deadlines = new Timer(_ => ExpireOverdue(), null, TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100));
    }

    private void ExpireOverdue()
    {
        var now = Environment.TickCount64;
        foreach (var (id, p) in pending)
        {
            if (p.Deadline <= now && pending.TryRemove(id, out _))
            {
                p.Reply.TrySetException(new PageProtocolException(PageError.Internal, p.Host,
                    p.Lost ?? $"no reply within {p.Timeout.TotalSeconds:0.#} s: host dead or overloaded"));
            }
            else if (p.Vm is { } vm && p.PublishedAt > 0 && now - p.PublishedAt >= (long)ProbeAfter.TotalMilliseconds && TryClaimProbe(p.Queue, now))
            {
                _ = ProbeAsync(p.Host, vm, p.Queue);
            }
        }
    }

    /// <summary>One probe per queue at a time, and none sooner than ProbeAfter after the last one ended.</summary>
    private bool TryClaimProbe(string queue, long now) => probing.TryGetValue(queue, out var next)
        ? next <= now && probing.TryUpdate(queue, long.MaxValue, next)
        : probing.TryAdd(queue, long.MaxValue);

    private async Task ProbeAsync(string host, Guid vm, string queue)
    {
        try
        {
            // Taken by the broker before the probe is published: ahead of it in the queue.
            var ahead = pending.Where(kv => kv.Value.Queue == queue && kv.Value.PublishedAt > 0).Select(kv => kv.Key).ToList();
            var id = NewRequestId();
            await await SendAsync(bulk, host, queue, id, PageFrame.Build(FrameKind.Store, vm, id, 0), vm, BulkTimeout, CancellationToken.None);
            var until = Environment.TickCount64 + LostGraceMs;
            foreach (var lost in ahead)
            {
                if (pending.TryGetValue(lost, out var p))
                {
                    p.Lost = $"request lost: {host} answered a later request to VM {vm} first (its memory server restarted?)";
                    p.Deadline = Math.Min(p.Deadline, until);
                }
            }
        }
        catch (PageProtocolException e) when (e.Code == PageError.UnknownVm)
        {
            FailQueue(queue, host, e.Message);
        }
#pragma warning disable CA1031 // a probe that fails proves nothing: the requests keep their own deadlines
        catch (Exception)
#pragma warning restore CA1031
        {
        }
        finally
        {
            probing[queue] = Environment.TickCount64 + (long)ProbeAfter.TotalMilliseconds;
        }
    }

    /// <summary>The queue is gone: nothing sent to it will be answered.</summary>
    private void FailQueue(string queue, string host, string message)
    {
        foreach (var (id, p) in pending)
        {
            if (p.Queue == queue && pending.TryRemove(id, out _))
            {
                p.Reply.TrySetException(new PageProtocolException(PageError.UnknownVm, host, message));
            }
        }
    }

    public static async Task<PageClient> CreateAsync(IConnection connection, CancellationToken ct = default)
    {
        // Our own window (the caller's) bounds outstanding confirms: no library rate limiter.
        var bulk = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true,
            outstandingPublisherConfirmationsRateLimiter: null), ct);
        var fetch = await connection.CreateChannelAsync(cancellationToken: ct);
        var client = new PageClient(bulk, fetch);
        foreach (var channel in new[] { bulk, fetch })
        {
            var consumer = new AsyncEventingBasicConsumer(channel);
            consumer.ReceivedAsync += (_, d) =>
            {
                if (d.Body.Length > 5 && d.Body.Span[5] == (byte)FrameKind.StoreAcks)
                {
                    client.CompleteStores(d.Body.Span);
                }
                else
                {
                    client.Complete(d.BasicProperties.CorrelationId, d.Body.ToArray());
                }
                return Task.CompletedTask;
            };
            await channel.BasicConsumeAsync(ReplyTo, autoAck: true, consumer, ct);
        }
        fetch.BasicReturnAsync += (_, r) =>
        {
            client.Fail(r.BasicProperties.CorrelationId, PageError.UnknownVm, $"no queue {r.RoutingKey}: host down or VM not started");
            return Task.CompletedTask;
        };
        return client;
    }

    private void Complete(string? correlation, byte[] reply)
    {
        if (ulong.TryParse(correlation, CultureInfo.InvariantCulture, out var id) && pending.TryRemove(id, out var p))
        {
            p.Reply.TrySetResult(reply);
        }
    }

    /// <summary>One reply acknowledging several stores (the memory server coalesces them). A malformed
    /// one is dropped: its stores then time out with the host named, and are sent again.</summary>
    private void CompleteStores(ReadOnlySpan<byte> frame)
    {
        List<(ulong RequestId, int Pages)> acks;
        try
        {
            acks = PageFrame.ReadStoreAcks(frame);
        }
        catch (InvalidDataException)
        {
            return;
        }
        foreach (var (id, pages) in acks)
        {
            if (pending.TryRemove(id, out var p))
            {
                p.Reply.TrySetResult(PageFrame.Build(FrameKind.StoreAck, Guid.Empty, id, pages));
            }
        }
    }

    private void Fail(string? correlation, PageError code, string message)
    {
        if (ulong.TryParse(correlation, CultureInfo.InvariantCulture, out var id) && pending.TryRemove(id, out var p))
        {
            p.Reply.TrySetException(new PageProtocolException(code, p.Host, message));
        }
    }

    public ulong NewRequestId() => (ulong)Interlocked.Increment(ref nextRequest);

    /// <summary>Sends a frame and waits for its reply; an error reply throws PageProtocolException.</summary>
    private async Task<byte[]> RequestAsync(IChannel channel, string host, string queue, ulong id, ReadOnlyMemory<byte> frame, TimeSpan timeout, CancellationToken ct,
        Guid? vm = null) =>
        await await SendAsync(channel, host, queue, id, frame, vm, timeout, ct);

    /// <summary>Publishes a request and returns once the broker has taken it (confirmed, on the bulk
    /// channel), so the frame's buffer may be reused; the task it returns completes with the reply.
    /// <paramref name="vm"/>: set for a request to that VM's bulk queue, which may be probed.</summary>
    private async Task<Task<byte[]>> SendAsync(IChannel channel, string host, string queue, ulong id, ReadOnlyMemory<byte> frame, Guid? vm, TimeSpan timeout,
        CancellationToken ct)
    {
        var reply = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        var request = pending[id] = new Pending(reply, host, queue, vm, timeout) { Deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds };
        var cancel = ct.UnsafeRegister(_ => reply.TrySetCanceled(ct), null);
        var published = false;
        try
        {
            var props = new BasicProperties { ReplyTo = ReplyTo, CorrelationId = id.ToString(CultureInfo.InvariantCulture) };
            await channel.BasicPublishAsync("", queue, mandatory: true, props, frame, ct);
            request.PublishedAt = Environment.TickCount64;
            published = true;
        }
        catch (PublishReturnException)
        {
            // What went to that queue before is gone with it, or was answered already.
            var message = $"no queue {queue}: host down, VM not started, or no longer served there (its memory server restarted)";
            FailQueue(queue, host, message);
            throw new PageProtocolException(PageError.UnknownVm, host, message);
        }
        finally
        {
            if (!published)
            {
                pending.TryRemove(id, out _);
                await cancel.DisposeAsync();
            }
        }
        return ReplyAsync(reply.Task, id, host, cancel);
    }

    private async Task<byte[]> ReplyAsync(Task<byte[]> reply, ulong id, string host, CancellationTokenRegistration cancel)
    {
        try
        {
            var bytes = await reply;
            if (PageFrame.Parse(bytes).Kind == FrameKind.Error)
            {
                var (code, message) = PageFrame.ReadError(bytes);
                throw new PageProtocolException(code, host, message);
            }
            return bytes;
        }
        finally
        {
            pending.TryRemove(id, out _);
            await cancel.DisposeAsync();
        }
    }

    /// <summary>Starts serving a VM at a host (idempotent), which prepares room for the pages it expects;
    /// returns the host's public key (used only by the allenc baseline to send its channel key).</summary>
    public Task<byte[]> StartVmAsync(string host, Guid vm, MigrationMode mode, long expectedPages = 0, CancellationToken ct = default) =>
        StartVmAsync(host, vm, mode, expectedPages, null, ct);

    /// <summary>Starts serving a VM owned by <paramref name="capability"/> (32 bytes), which the host issued for
    /// <paramref name="migrationId"/> (a host's server checks that): from then on the VM is released, and its
    /// use shown, only to who shows it; starting it again takes the same capability.</summary>
    public async Task<byte[]> StartVmAsync(string host, Guid vm, MigrationMode mode, long expectedPages, byte[]? capability, CancellationToken ct, Guid? migrationId = null)
    {
        var id = NewRequestId();
        var payload = new byte[9 + (capability?.Length ?? 0) + (capability is not null && migrationId is not null ? 16 : 0)];
        payload[0] = (byte)mode;
        BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(1), expectedPages);
        capability?.CopyTo(payload, 9);
        if (capability is not null && migrationId is { } migration)
        {
            migration.TryWriteBytes(payload.AsSpan(9 + capability.Length));
        }
        if (capability is not null)
        {
            UseCapability(host, vm, capability);
        }
        var reply = await RequestAsync(bulk, host, PageQueues.Control(host), id, PageFrame.Build(FrameKind.StartVm, vm, id, 0, payload), BulkTimeout, ct);
        return PageFrame.Parse(reply).Payload.ToArray();
    }

    private readonly ConcurrentDictionary<(string Host, Guid Vm), string> tokens = new();

    /// <summary>From now on this client addresses the VM at the host as the holder of its capability (its
    /// queues are named by it: see PageQueues.Token).</summary>
    public void UseCapability(string host, Guid vm, byte[] capability) => tokens[(host, vm)] = TokenOf(capability);

    private static string TokenOf(byte[] capability) => PageQueues.Token(SHA256.HashData(capability));

    /// <summary>Forgets the capabilities this client holds for the VM (at every host): the VM has left.</summary>
    public void ForgetVm(Guid vm)
    {
        foreach (var key in tokens.Keys.Where(k => k.Vm == vm))
        {
            tokens.TryRemove(key, out _);
        }
    }

    private string BulkQueue(string host, Guid vm) => PageQueues.Bulk(host, vm, tokens.GetValueOrDefault((host, vm)));

    private string FetchQueue(string host, Guid vm) => PageQueues.Fetch(host, vm, tokens.GetValueOrDefault((host, vm)));

    /// <summary>allenc baseline only: the channel key, wrapped for the host.</summary>
    public async Task SendChannelKeyAsync(string host, Guid vm, byte[] wrappedKey, CancellationToken ct = default)
    {
        var id = NewRequestId();
        await RequestAsync(bulk, host, BulkQueue(host, vm), id, PageFrame.Build(FrameKind.ChannelKey, vm, id, 0, wrappedKey), BulkTimeout, ct, vm);
    }

    /// <summary>Stores a batch and returns once the memory server has it (its ack, not just the
    /// broker's confirm): only then may the sender let the pages go.</summary>
    public async Task StoreAsync(string host, Guid vm, IReadOnlyList<PageRecord> pages, CancellationToken ct = default) =>
        await await PublishBatchAsync(FrameKind.Store, host, vm, Batch(pages), ct);

    /// <summary>The bulk path's store, in two steps: the returned task completes when the broker has
    /// confirmed the batch, after which its buffer may be reused (the broker holds the message); the
    /// task it yields completes when the memory server has stored the pages, and only then are they
    /// stored. The sender's flow control waits on the first, its progress on the second, so a window
    /// of confirms keeps the path as full as plain publishing does.</summary>
    public Task<Task> PublishStoreAsync(string host, Guid vm, PageBatch batch, CancellationToken ct = default) =>
        PublishBatchAsync(FrameKind.Store, host, vm, batch, ct);

    /// <summary>A page-out: returns once the memory server has stored the pages.</summary>
    public async Task PageOutAsync(string host, Guid vm, IReadOnlyList<PageRecord> pages, CancellationToken ct = default) =>
        await await PublishBatchAsync(FrameKind.PageOut, host, vm, Batch(pages), ct);

    private static PageBatch Batch(IReadOnlyList<PageRecord> pages)
    {
        var batch = new PageBatch(PageFrame.PagesSize(pages));
        foreach (var page in pages)
        {
            batch.Advance(PageFrame.WritePage(batch.Next, page));
        }
        return batch;
    }

    private async Task<Task> PublishBatchAsync(FrameKind kind, string host, Guid vm, PageBatch batch, CancellationToken ct)
    {
        var (id, count) = (NewRequestId(), batch.Count);
        var reply = await SendAsync(bulk, host, BulkQueue(host, vm), id, batch.Frame(kind, vm, id), vm, BulkTimeout, ct);
        return StoredAsync(reply, host, count);
    }

    private static async Task StoredAsync(Task<byte[]> reply, string host, int count)
    {
        var stored = PageFrame.Parse(await reply).Count;
        if (stored != count)
        {
            throw new PageProtocolException(PageError.Internal, host, $"stored {stored} of {count} pages");
        }
    }

    /// <summary>Page-in: the records exactly as the host returns them (unchecked: see PageCodec.Open).</summary>
    public async Task<IReadOnlyList<PageRecord>> FetchAsync(string host, Guid vm, ulong[] pfns, CancellationToken ct = default)
    {
        var id = NewRequestId();
        var reply = await RequestAsync(fetch, host, FetchQueue(host, vm), id, PageFrame.BuildFetch(vm, id, pfns), FetchTimeout, ct);
        try
        {
            return PageFrame.ReadPages(reply);
        }
        catch (InvalidDataException e)
        {
            throw new PageProtocolException(PageError.Malformed, host, $"malformed page-in reply: {e.Message}");
        }
    }

    public Task<long> ReleaseAsync(string host, Guid vm, CancellationToken ct = default) => ReleaseAsync(host, vm, null, ct);

    /// <summary>Drops the VM's pages at the host; a VM started with a capability takes it.</summary>
    public async Task<long> ReleaseAsync(string host, Guid vm, byte[]? capability, CancellationToken ct)
    {
        var id = NewRequestId();
        var queue = capability is null ? BulkQueue(host, vm) : PageQueues.Bulk(host, vm, TokenOf(capability));
        var reply = await RequestAsync(bulk, host, queue, id, PageFrame.Build(FrameKind.Release, vm, id, 0, capability), BulkTimeout, ct, vm);
        tokens.TryRemove((host, vm), out _);
        return PageFrame.Parse(reply).Count;
    }

    public sealed record Usage(long CapacityPages, long UsedPages, IReadOnlyDictionary<Guid, long> PagesPerVm);

    public Task<Usage> UsageAsync(string host, CancellationToken ct = default) => UsageAsync(host, Guid.Empty, null, ct);

    /// <summary>The host's capacity and use; per VM, the VMs nobody owns and <paramref name="vm"/> when
    /// <paramref name="capability"/> is its own.</summary>
    public async Task<Usage> UsageAsync(string host, Guid vm, byte[]? capability, CancellationToken ct)
    {
        var id = NewRequestId();
        var reply = await RequestAsync(bulk, host, PageQueues.Control(host), id, PageFrame.Build(FrameKind.Usage, vm, id, 0, capability), BulkTimeout, ct);
        try
        {
            var (capacity, used, perVm) = PageFrame.ReadUsage(reply);
            return new Usage(capacity, used, perVm);
        }
        catch (InvalidDataException e)
        {
            throw new PageProtocolException(PageError.Malformed, host, $"malformed usage reply: {e.Message}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        await deadlines.DisposeAsync();
        await bulk.CloseAsync();
        await fetch.CloseAsync();
        foreach (var (_, p) in pending)
        {
            p.Reply.TrySetCanceled();
        }
    }
}
