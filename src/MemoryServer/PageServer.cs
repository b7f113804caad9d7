using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;

namespace SEmigrate.MemoryServer;

/// <summary>The memory server of one sub-host on RabbitMQ: a control queue (start a VM, usage: nothing
/// else, since it names no VM's capability), and per started VM a bulk queue (store, page-out, release,
/// channel key) and a fetch queue (page-in), each consumed on its own channel and named by the VM's
/// capability. Every request gets a reply, an error reply when it is bad (malformed, unknown
/// VM or page, store full); a bad request without a reply address goes to the dead-letter queue with
/// its reason. A delivery is acknowledged only after it has been handled, so nothing stored is lost
/// and a bad message never stops the others.</summary>
public sealed class PageServer : IAsyncDisposable
{
    private sealed class Vm(Guid id, MigrationMode mode)
    {
        public Guid Id => id;

        public MigrationMode Mode => mode;

        public List<IChannel> Channels { get; } = [];

        public AllEncBaseline? AllEnc { get; set; }

        /// <summary>The SHA-256 of the VM's capability: who may release it and see its use (null: started
        /// without one, as tests and benchmarks do; anyone may then).</summary>
        public byte[]? Owner { get; set; }

        /// <summary>What its queue names carry, decided by its capability (null: plain names).</summary>
        public string? Token => Owner is null ? null : PageQueues.Token(Owner);

        /// <summary>Whether a request showing <paramref name="shown"/> (a capability's hash, or null) is its owner's.</summary>
        public bool IsOwner(byte[]? shown) => Owner is { } owner && shown is not null && CryptographicOperations.FixedTimeEquals(owner, shown);
    }

    /// <summary>The hash of the capability a Release or Usage frame shows in its payload; null when it shows none.</summary>
    private static byte[]? ShownCapability(ReadOnlySpan<byte> frame) =>
        PageFrame.Parse(frame).Payload is { Length: CapabilitySize } capability ? SHA256.HashData(capability) : null;

    private readonly IConnection connection;
    private readonly MemoryServerOptions options;
    private readonly IPageStore store;
    private readonly ILogger logger;
    private readonly ConcurrentDictionary<Guid, Vm> vms = new();
    private readonly SemaphoreSlim startGate = new(1, 1);
    // allenc baseline only: the channel keys' wrapping key. A host's own (pinned by the operator in every
    // request, so a source wraps for nothing else), or one of this server's when none is given.
    private readonly HostKeyPair allEncKeys;
    private readonly bool ownsAllEncKeys;
    private IChannel control = null!;

    // Store acks are coalesced per reply address: one reply for up to AcksPerReply batches, sent when
    // that many wait or AckDelay after the first, so a bulk store sends one reply message through
    // server, broker and sender per eight batches instead of one per batch. Senders do not wait on
    // these acks to keep sending (their flow control is the broker's confirms), so the delay does not
    // stall them. Page-outs, errors and every other request are answered at once.
    private const int AcksPerReply = 8;
    private static readonly TimeSpan AckDelay = TimeSpan.FromMilliseconds(2);
    private readonly Dictionary<string, List<(ulong RequestId, int Pages)>> storeAcks = [];
    private readonly Lock acksGate = new();
    private readonly SemaphoreSlim acksSending = new(1, 1);
    private Timer? ackTimer;
    private bool ackTimerArmed;
    private IChannel acks = null!;
    private int disposed;

    /// <summary>Whether a capability is one this server's host issued for a migration's VM (null: any is taken,
    /// as in tests of the page path alone). Without this check any 32 bytes would start a VM and reserve room.</summary>
    private readonly Func<Guid, Guid, byte[], bool>? issued;

    private PageServer(IConnection connection, MemoryServerOptions options, IPageStore store, ILogger logger, HostKeyPair? hostKeys, Func<Guid, Guid, byte[], bool>? issued)
    {
        this.connection = connection;
        this.options = options;
        this.store = store;
        this.logger = logger;
        this.issued = issued;
        (allEncKeys, ownsAllEncKeys) = hostKeys is null ? (HostKeyPair.Generate(), true) : (hostKeys, false);
    }

    public string Host => options.Host;

    public IPageStore Store => store;

    public string DeadLetterQueue => PageQueues.Control(options.Host) + ".dead";

    /// <summary><paramref name="issued"/>: whether a capability shown with a migration's id is one this host issued
    /// for that migration and VM (a host's server checks, so a made-up one starts nothing).</summary>
    public static async Task<PageServer> StartAsync(IConnection connection, MemoryServerOptions options, IPageStore store, ILogger logger, CancellationToken ct = default,
        HostKeyPair? hostKeys = null, Func<Guid, Guid, byte[], bool>? issued = null)
    {
        if (string.IsNullOrWhiteSpace(options.Host))
        {
            throw new ArgumentException("MemoryServer:Host must name this sub-host", nameof(options));
        }
        var server = new PageServer(connection, options, store, logger, hostKeys, issued);
        server.control = await connection.CreateChannelAsync(cancellationToken: ct);
        server.acks = await connection.CreateChannelAsync(cancellationToken: ct);
        server.ackTimer = new Timer(_ => _ = server.FlushStoreAcksAsync());
        await server.control.QueueDeclareAsync(server.DeadLetterQueue, durable: false, exclusive: false, autoDelete: false, cancellationToken: ct);
        await server.ConsumeAsync(server.control, PageQueues.Control(options.Host), null, ct);
        foreach (var (vm, _) in store.PagesPerVm())
        {
            // A file store that survived a restart: its VMs are served again. Their records are served
            // as stored, which is all semigrate and noenc need; allenc's at-rest keys lived in memory
            // and are gone (a limit of that baseline, not of the store).
            await server.StartVmAsync(vm, MigrationMode.Semigrate, null, store.OwnerOf(vm), ct);
        }
        logger.LogInformation("memory server {Host} up: {Used}/{Capacity} pages", options.Host, store.UsedPages, store.CapacityPages);
        return server;
    }

    private async Task ConsumeAsync(IChannel channel, string queue, Vm? vm, CancellationToken ct)
    {
        // A VM's queues are this server's own (exclusive): they go with its connection, so a server that
        // died leaves none behind, and a request for a VM it no longer serves (it restarted) is returned
        // to its sender at once (mandatory routing) instead of waiting in a queue nobody reads. The
        // control queue outlives a restart: requests wait there for the server to come back.
        await channel.QueueDeclareAsync(queue, durable: false, exclusive: vm is not null, autoDelete: false, cancellationToken: ct);
        await channel.BasicQosAsync(0, options.Prefetch, false, ct);
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += (_, delivery) => HandleAsync(channel, delivery, vm);
        await channel.BasicConsumeAsync(queue, autoAck: false, consumer, ct);
    }

    /// <summary>Serves a VM (idempotent): its room is reserved first (<paramref name="expectedPages"/>,
    /// null: none, a VM that survived a restart), then its queues open. What fails leaves nothing behind:
    /// no channel open, no room held by a VM that was not there.</summary>
    private async Task StartVmAsync(Guid id, MigrationMode mode, long? expectedPages, byte[]? owner, CancellationToken ct)
    {
        await startGate.WaitAsync(ct);
        try
        {
            if (vms.TryGetValue(id, out var started))
            {
                // Idempotent for its owner only (a retry, or paging started again after a restart); one
                // started without a capability stays so (its queues have plain names).
                if (started.Owner is null ? owner is not null : !started.IsOwner(owner))
                {
                    throw new PageProtocolException(PageError.Forbidden, options.Host, $"VM {id} is served here for the holder of another capability");
                }
                if (expectedPages is { } again)
                {
                    store.Reserve(id, again);
                }
                return;
            }
            if (owner is not null && store.HasEnded(owner))
            {
                throw new PageProtocolException(PageError.Ended, options.Host, $"VM {id} was released here by the holder of this capability: its migration is over");
            }
            if (vms.Count >= options.MaxVms)
            {
                throw new PageProtocolException(PageError.StoreFull, options.Host, $"{options.Host} serves {vms.Count} VMs, its most (MemoryServer:MaxVms)");
            }
            var had = store.PagesPerVm().ContainsKey(id);
            if (expectedPages is { } pages)
            {
                store.Reserve(id, pages);
            }
            var vm = new Vm(id, mode) { Owner = owner };
            try
            {
                if (owner is not null)
                {
                    store.SetOwner(id, owner);
                }
                foreach (var queue in new[] { PageQueues.Bulk(options.Host, id, vm.Token), PageQueues.Fetch(options.Host, id, vm.Token) })
                {
                    var channel = await connection.CreateChannelAsync(cancellationToken: ct);
                    vm.Channels.Add(channel);
                    await ConsumeAsync(channel, queue, vm, ct);
                }
            }
            catch
            {
                foreach (var channel in vm.Channels)
                {
                    await channel.CloseAsync(CancellationToken.None);
                }
                if (!had)
                {
                    store.Release(id);
                }
                throw;
            }
            vms[id] = vm;
        }
        finally
        {
            startGate.Release();
        }
    }

    private readonly ConcurrentDictionary<string, long> refusals = new(StringComparer.Ordinal);

    /// <summary>Requests refused since the server started, by error (malformed, forbidden, ...): what its host
    /// reports to the audit trail (HostSeen), a count rather than an event per request, so a flood of bad
    /// requests cannot flood the trail.</summary>
    public IReadOnlyDictionary<string, long> Refusals => refusals.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);

    private async Task HandleAsync(IChannel channel, BasicDeliverEventArgs delivery, Vm? queueVm)
    {
        var body = delivery.Body;
        Guid vmId = Guid.Empty;
        ulong requestId = 0;
        byte[] reply;
        Action? after = null;
        try
        {
            var frame = PageFrame.Parse(body.Span);
            (vmId, requestId) = (frame.Vm, frame.RequestId);
            (reply, after) = await HandleFrameAsync(frame.Kind, frame.Vm, frame.RequestId, body, queueVm);
        }
        catch (InvalidDataException e)
        {
            reply = PageFrame.BuildError(vmId, requestId, PageError.Malformed, e.Message);
        }
        catch (StoreFullException e)
        {
            reply = PageFrame.BuildError(vmId, requestId, PageError.StoreFull, e.Message);
        }
        catch (PageProtocolException e)
        {
            reply = PageFrame.BuildError(vmId, requestId, e.Code, e.Message);
        }
#pragma warning disable CA1031 // one bad request must not stop the server
        catch (Exception e)
#pragma warning restore CA1031
        {
            logger.LogError(e, "memory server {Host}: request {RequestId} of VM {Vm} failed", options.Host, requestId, vmId);
            reply = PageFrame.BuildError(vmId, requestId, PageError.Internal, e.Message);
        }

        if (reply.Length > 5 && reply[5] == (byte)FrameKind.Error)
        {
            refusals.AddOrUpdate(PageFrame.ReadError(reply).Code.ToString(), 1, (_, n) => n + 1);
        }
        var replyTo = delivery.BasicProperties.ReplyTo;
        if (!string.IsNullOrEmpty(replyTo) && reply[5] == (byte)FrameKind.StoreAck)
        {
            await QueueStoreAckAsync(replyTo, requestId, PageFrame.Parse(reply).Count);
        }
        else if (!string.IsNullOrEmpty(replyTo))
        {
            var props = new BasicProperties { CorrelationId = delivery.BasicProperties.CorrelationId };
            await channel.BasicPublishAsync("", replyTo, mandatory: false, props, reply);
        }
        else if (reply.Length > 5 && reply[5] == (byte)FrameKind.Error)
        {
            var (code, message) = PageFrame.ReadError(reply);
            logger.LogWarning("memory server {Host}: dead-lettered a request without a reply address: {Code}: {Message}", options.Host, code, message);
            var props = new BasicProperties { Headers = new Dictionary<string, object?> { ["x-semigrate-error"] = $"{code}: {message}" } };
            await channel.BasicPublishAsync("", DeadLetterQueue, mandatory: false, props, body);
        }
        await channel.BasicAckAsync(delivery.DeliveryTag, multiple: false);
        after?.Invoke();
    }

    private async Task<(byte[] Reply, Action? After)> HandleFrameAsync(FrameKind kind, Guid vmId, ulong requestId, ReadOnlyMemory<byte> body, Vm? queueVm)
    {
        if (queueVm is not null && queueVm.Id != vmId)
        {
            throw new InvalidDataException($"a request for VM {vmId} arrived on VM {queueVm.Id}'s queue");
        }
        // Whoever can name a queue may send to it: only the VM's own queues, named by its capability,
        // reach its pages; the control queue, which every broker user can name, only starts VMs and counts.
        var onControl = queueVm is null;
        if (onControl != (kind is FrameKind.StartVm or FrameKind.Usage))
        {
            throw new PageProtocolException(PageError.Forbidden, options.Host, onControl
                ? $"the control queue takes StartVm and Usage only, not {kind}: a VM's requests go to its own queues"
                : $"{kind} goes to the control queue, not to VM {vmId}'s");
        }
        switch (kind)
        {
            case FrameKind.StartVm:
            {
                var (mode, expected, capability, migration) = StartVmPayload(body.Span);
                if (capability is null && !options.AllowVmsWithoutCapability)
                {
                    throw new PageProtocolException(PageError.Forbidden, options.Host, $"StartVm of VM {vmId} shows no capability: this server starts no VM without one");
                }
                if (capability is not null && issued is not null && !(migration is { } m && issued(m, vmId, capability)))
                {
                    throw new PageProtocolException(PageError.Forbidden, options.Host, $"StartVm of VM {vmId} shows a capability this host did not issue for its migration");
                }
                await StartVmAsync(vmId, mode, expected, capability is null ? null : SHA256.HashData(capability), CancellationToken.None);
                return (PageFrame.Build(FrameKind.VmStarted, vmId, requestId, 0, allEncKeys.PublicKey), null);
            }
            case FrameKind.Usage:
            {
                // A client sees the VMs nobody owns, and the one whose capability it shows (header VM, payload capability).
                var shown = ShownCapability(body.Span);
                var perVm = store.PagesPerVm().Where(kv => !vms.TryGetValue(kv.Key, out var v) || v.Owner is null || (kv.Key == vmId && v.IsOwner(shown))).ToList();
                var payload = new byte[16 + perVm.Count * 24];
                BinaryPrimitives.WriteInt64LittleEndian(payload, store.CapacityPages);
                BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(8), store.UsedPages);
                var at = 16;
                foreach (var (id, pages) in perVm)
                {
                    id.TryWriteBytes(payload.AsSpan(at, 16));
                    BinaryPrimitives.WriteInt64LittleEndian(payload.AsSpan(at + 16), pages);
                    at += 24;
                }
                return (PageFrame.Build(FrameKind.UsageReport, vmId, requestId, perVm.Count, payload), null);
            }
        }

        var vm = vms.TryGetValue(vmId, out var known) ? known
            : throw new PageProtocolException(PageError.UnknownVm, options.Host, $"VM {vmId} is not started on {options.Host}");
        switch (kind)
        {
            case FrameKind.ChannelKey when vm.Mode == MigrationMode.AllEnc:
            {
                var wrapped = PageFrame.Parse(body.Span).Payload;
                var key = KeyWrap.Unwrap(wrapped, allEncKeys, $"allenc-channel|{vmId:N}|{options.Host}");
                lock (vm)
                {
                    vm.AllEnc ??= new AllEncBaseline(vmId);
                }
                if (!vm.AllEnc.SetChannelKey(key, 0x8000_0000u | (uint)RandomNumberGenerator.GetInt32(int.MaxValue)))
                {
                    throw new PageProtocolException(PageError.Forbidden, options.Host, $"VM {vmId} has another channel key: it is not replaced");
                }
                return (PageFrame.Build(FrameKind.ChannelKeyAccepted, vmId, requestId, 0), null);
            }
            case FrameKind.ChannelKey:
                throw new PageProtocolException(PageError.Unsupported, options.Host, $"VM {vmId} is in {vm.Mode.ToWireName()} mode: this memory server takes no key for it");
            case FrameKind.Store or FrameKind.PageOut:
            {
                IReadOnlyList<PageRecord> pages = PageFrame.ReadPages(body);
                if (pages.Count == 0)
                {
                    // A sender's probe (see PageClient): answered in queue order, stores nothing.
                    return (PageFrame.Build(kind == FrameKind.Store ? FrameKind.StoreAck : FrameKind.PageOutAck, vmId, requestId, 0), null);
                }
                if (vm.Mode == MigrationMode.AllEnc)
                {
                    pages = (vm.AllEnc ?? throw new PageProtocolException(PageError.Unsupported, options.Host, "allenc VM without a channel key")).ToRest(pages);
                }
                store.Put(vmId, pages);
                return (PageFrame.Build(kind == FrameKind.Store ? FrameKind.StoreAck : FrameKind.PageOutAck, vmId, requestId, pages.Count), null);
            }
            case FrameKind.Fetch:
            {
                var pfns = PageFrame.ReadPfns(body.Span);
                var records = new List<byte[]>(pfns.Length);
                foreach (var pfn in pfns)
                {
                    var stored = store.Get(vmId, pfn)
                        ?? throw new PageProtocolException(PageError.UnknownPage, options.Host, $"page 0x{pfn:x} of VM {vmId} is not stored here");
                    if (vm.Mode == MigrationMode.AllEnc)
                    {
                        var sent = (vm.AllEnc ?? throw new PageProtocolException(PageError.Unsupported, options.Host, "allenc VM without a channel key"))
                            .FromRest(PageFrame.ReadRecord(stored));
                        stored = new byte[sent.WireSize];
                        PageFrame.WritePage(stored, sent);
                    }
                    records.Add(stored);
                }
                // The stored wire forms, as they are: this server never looks inside them.
                var reply = new byte[PageFrame.HeaderSize + records.Sum(r => r.Length)];
                PageFrame.WriteHeader(reply, FrameKind.Pages, vmId, requestId, records.Count);
                var at = PageFrame.HeaderSize;
                foreach (var r in records)
                {
                    r.CopyTo(reply, at);
                    at += r.Length;
                }
                return (reply, null);
            }
            case FrameKind.Release:
            {
                if (vm.Owner is not null && !vm.IsOwner(ShownCapability(body.Span)))
                {
                    throw new PageProtocolException(PageError.Forbidden, options.Host, $"only the holder of VM {vmId}'s capability releases it");
                }
                if (vm.Owner is { } ended)
                {
                    store.EndOwner(ended); // first: from here on, this capability starts nothing here again
                }
                var released = store.Release(vmId);
                vms.TryRemove(vmId, out _);
                // Page-ins fail at once from now on (no queue); the bulk queue goes once this is acked.
                await control.QueueDeleteAsync(PageQueues.Fetch(options.Host, vm.Id, vm.Token), ifUnused: false, ifEmpty: false);
                return (PageFrame.Build(FrameKind.Released, vmId, requestId, (int)Math.Min(released, int.MaxValue)), () => _ = CloseVmAsync(vm));
            }
            default:
                throw new InvalidDataException($"frame kind {(byte)kind} is not a request");
        }
    }

    private async Task QueueStoreAckAsync(string replyTo, ulong requestId, int pages)
    {
        bool full;
        lock (acksGate)
        {
            if (!storeAcks.TryGetValue(replyTo, out var waiting))
            {
                storeAcks[replyTo] = waiting = [];
            }
            waiting.Add((requestId, pages));
            full = waiting.Count >= AcksPerReply;
            if (!full && !ackTimerArmed)
            {
                ackTimerArmed = true;
                ackTimer!.Change(AckDelay, Timeout.InfiniteTimeSpan);
            }
        }
        if (full)
        {
            await FlushStoreAcksAsync();
        }
    }

    private async Task FlushStoreAcksAsync()
    {
        await acksSending.WaitAsync();
        try
        {
            List<KeyValuePair<string, List<(ulong RequestId, int Pages)>>> due;
            lock (acksGate)
            {
                due = [.. storeAcks];
                storeAcks.Clear();
                ackTimerArmed = false;
            }
            foreach (var (replyTo, waiting) in due)
            {
                await acks.BasicPublishAsync("", replyTo, mandatory: false, new BasicProperties(), PageFrame.BuildStoreAcks(waiting));
            }
        }
#pragma warning disable CA1031 // a timer callback: the senders time out and resend (stores are idempotent)
        catch (Exception e)
#pragma warning restore CA1031
        {
            logger.LogWarning(e, "memory server {Host}: sending store acks failed", options.Host);
        }
        finally
        {
            acksSending.Release();
        }
    }

    /// <summary>Bytes of a VM's capability, where a StartVm, Release or Usage frame carries one.</summary>
    public const int CapabilitySize = 32;

    /// <summary>Mode (1), expected pages (8), the capability (32) and the migration it was issued for (16); each optional from the end.</summary>
    private static (MigrationMode Mode, long ExpectedPages, byte[]? Capability, Guid? Migration) StartVmPayload(ReadOnlySpan<byte> frame)
    {
        var payload = PageFrame.Parse(frame).Payload;
        var mode = payload.Length >= 1 && Enum.IsDefined((MigrationMode)payload[0]) ? (MigrationMode)payload[0]
            : throw new InvalidDataException("StartVm without a known mode");
        if (payload.Length is not (1 or 9 or 9 + CapabilitySize or 9 + CapabilitySize + 16))
        {
            throw new InvalidDataException($"a StartVm payload is 1, 9, {9 + CapabilitySize} or {9 + CapabilitySize + 16} bytes, not {payload.Length}");
        }
        return (mode, payload.Length >= 9 ? Math.Max(0, BinaryPrimitives.ReadInt64LittleEndian(payload[1..])) : 0,
            payload.Length > 9 ? payload.Slice(9, CapabilitySize).ToArray() : null,
            payload.Length > 9 + CapabilitySize ? new Guid(payload[(9 + CapabilitySize)..]) : null);
    }

    private async Task CloseVmAsync(Vm vm)
    {
        try
        {
            await control.QueueDeleteAsync(PageQueues.Bulk(options.Host, vm.Id, vm.Token), ifUnused: false, ifEmpty: false);
            foreach (var channel in vm.Channels)
            {
                await channel.CloseAsync();
            }
        }
#pragma warning disable CA1031 // best effort: the pages are already released
        catch (Exception e)
#pragma warning restore CA1031
        {
            logger.LogWarning(e, "memory server {Host}: closing VM {Vm}'s queues failed", options.Host, vm.Id);
        }
        vm.AllEnc?.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 1)
        {
            return; // a test plays a crashed server, then cleans up
        }
        if (ackTimer is not null)
        {
            await ackTimer.DisposeAsync();
            await FlushStoreAcksAsync();
        }
        foreach (var vm in vms.Values)
        {
            foreach (var channel in vm.Channels)
            {
                await channel.CloseAsync();
            }
            vm.AllEnc?.Dispose();
        }
        await control.CloseAsync();
        await acks.CloseAsync();
        if (ownsAllEncKeys)
        {
            allEncKeys.Dispose();
        }
        startGate.Dispose();
        acksSending.Dispose();
    }
}
