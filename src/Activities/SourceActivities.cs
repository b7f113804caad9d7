using System.Collections.Concurrent;
using System.Diagnostics;
using System.Security.Cryptography;
using MassTransit;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Guest.Memory;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection;
using SEmigrate.Introspection.Classification;
using SEmigrate.Introspection.Kernel;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Client;
using SEmigrate.Sealing;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>The source host's steps: introspect and classify the guest, seal and send each destination's
/// pages, hand the main host the sealed manifest and the wrapped data key, and let the VM go. Page data,
/// the classification and keys stay here; the steps take and return small records that name no file.
/// <paramref name="mainHost"/>: on a host that is a main host too, the running guests it took over move on
/// from here as well.</summary>
public sealed class SourceActivities(HostContext host, PageClient client, IBus publish, StepGuard guard, HostKeyPair keys, ILogger<SourceActivities> logger,
    MainHostActivities? mainHost = null)
{
    /// <summary>Pages per chunk for placement; large VMs get larger chunks so the list stays small.</summary>
    private const int MaxChunks = 4096;
    private static readonly TimeSpan HeartbeatEvery = TimeSpan.FromMilliseconds(250);
    private readonly ConcurrentDictionary<(Guid, string), SemaphoreSlim> transfers = new();
    private readonly Throttle throttle = new();

    // Transfer progress leaves through this host's own exit, which orchestrators bind to where they listen (HostRoutes).
    private readonly Uri progressExit = new($"exchange:{StepQueues.ProgressExit(host.Host)}");

    [Activity("MeasureGuest")]
    public async Task<GuestLayout> MeasureAsync(MeasureGuest input)
    {
        var request = await guard.AllowAsync(nameof(MeasureGuest), input.MigrationId, input.Vm, input.Request);
        if (request.Source != host.Host || request.Guest != input.Guest)
        {
            throw await guard.RefuseAsync(nameof(MeasureGuest), input.MigrationId, input.Vm,
                $"the request moves guest '{request.Guest}' of {request.Source}, not '{input.Guest}' of {host.Host}");
        }
        await RefuseEndedAsync(nameof(MeasureGuest), input.MigrationId, input.Vm);
        // Under a drain order the guest is claimed from its measure on (the vouches below are for the
        // migration that holds it), so a migration made up under the order gets none while another moves it.
        await ClaimGuestAsync(nameof(MeasureGuest), request);
        var layout = await Task.Run(() => Measure(input));
        return request.Order is null ? layout : layout with { Vouches = Vouches(request, layout) };
    }

    /// <summary>Under a drain order, the word to each destination of the request that this host measured its
    /// guest for this migration, and placed so many pages there (its share by the placement rule, with the
    /// hand-over at the main host; see SourceVouch). None where the guest does not fit: the migration is refused.</summary>
    private Dictionary<string, SourceVouch> Vouches(MigrationRequest request, GuestLayout layout)
    {
        var vouches = new Dictionary<string, SourceVouch>(StringComparer.Ordinal);
        PlacementPlan plan;
        try
        {
            plan = Placement.Plan(layout.ChunkGuestPages, layout.ChunkPages, request.Main, request.SubHosts);
        }
        catch (PlacementException)
        {
            return vouches;
        }
        foreach (var destination in request.SubHosts.Prepend(request.Main).Select(d => d.Host).Distinct(StringComparer.Ordinal))
        {
            var pages = plan.Assignments.Where(a => a.Host == destination).Sum(a => a.Pages) + (destination == request.Main.Host ? layout.HandOverPages : 0);
            if (StepGuard.PinnedKey(request, destination) is { } key)
            {
                vouches[destination] = new SourceVouch(pages,
                    Convert.ToHexString(keys.Vouch(key, SourceVouch.Statement(request.MigrationId, request.Vm, request.Guest, destination, pages))));
            }
        }
        return vouches;
    }

    private static readonly Lock Claiming = new();

    /// <summary>The file naming a guest's claim under an order: hashes only (the guest's name comes from an
    /// unsigned request, and is checked as a name only later), so no name reaches outside the claims folder.</summary>
    public static string DrainClaimName(DrainOrder order, string guest) =>
        $"{Convert.ToHexStringLower(SHA256.HashData(order.Signature))[..32]}-{Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(guest)))[..32]}";

    /// <summary>How long a guest stays claimed by a migration that measured it and never introspected it.</summary>
    public static readonly TimeSpan MeasuredClaimLasts = TimeSpan.FromMinutes(10);

    /// <summary>Under a drain order, which nobody signs per migration, a guest moves in one migration at a
    /// time: the first to measure or introspect it here claims it until it is released here (every
    /// migration that introspected ends so, switched over or undone), or, if it never introspected (a
    /// migration refused before, or one made up), for <see cref="MeasuredClaimLasts"/> after its measure;
    /// another (one that the orchestrator, or anybody on the broker, made up under the same order) is
    /// refused while it lasts.</summary>
    private async Task ClaimGuestAsync(string step, MigrationRequest request)
    {
        if (request.Order is not { } order)
        {
            return; // a request the operator signed names its one migration itself
        }
        var folder = Path.Combine(host.StateDirectory, "drain-claims");
        var claim = Path.Combine(folder, DrainClaimName(order, request.Guest));
        Guid? holder = null;
        lock (Claiming)
        {
            if (File.Exists(claim) && Guid.TryParse(File.ReadAllText(claim), out var other) && other != request.MigrationId && State(other) is var held && !held.Released
                && (held.HasGuest || DateTime.UtcNow - File.GetLastWriteTimeUtc(claim) < MeasuredClaimLasts))
            {
                holder = other;
            }
            else
            {
                Directory.CreateDirectory(folder);
                File.WriteAllText(claim + ".tmp", request.MigrationId.ToString()); // whole or not at all
                File.Move(claim + ".tmp", claim, overwrite: true);
            }
        }
        if (holder is { } migration)
        {
            throw await guard.RefuseAsync(step, request.MigrationId, request.Vm,
                $"guest '{request.Guest}' is moving under this drain order already, in migration {migration}: one at a time");
        }
    }

    private GuestLayout Measure(MeasureGuest input)
    {
        var guest = FindGuest(input.Guest);
        using var memory = guest.OpenMemory(); // the ranges only: a running guest runs on
        return Layout(memory, HandOverPages(guest, memory.PfnLimit));
    }

    /// <summary>A migration whose source was released here is over: a step of it again is a replay.</summary>
    private async Task RefuseEndedAsync(string step, Guid migrationId, Guid vm)
    {
        if (State(migrationId).Released)
        {
            throw await guard.RefuseAsync(step, migrationId, vm, $"migration {migrationId} already ended at {host.Host} (a replay)");
        }
    }

    [Activity("Introspect")]
    public Task<IntrospectionResult> IntrospectAsync(IntrospectGuest input) => IntrospectAsync(input, ActivityExecutionContext.Current.CancellationToken);

    public async Task<IntrospectionResult> IntrospectAsync(IntrospectGuest input, CancellationToken ct)
    {
        var request = await guard.AllowAsync(nameof(IntrospectGuest), input.MigrationId, input.Vm, input.Request);
        if (request.Source != host.Host || request.Guest != input.Guest || request.Mode != input.Mode
            || !request.PlainProcesses.SequenceEqual(input.PlainProcesses, StringComparer.Ordinal))
        {
            throw await guard.RefuseAsync(nameof(IntrospectGuest), input.MigrationId, input.Vm,
                $"the request moves guest '{request.Guest}' of {request.Source} in {request.Mode} (plain: {string.Join(",", request.PlainProcesses)}), " +
                $"not '{input.Guest}' of {host.Host} in {input.Mode} (plain: {string.Join(",", input.PlainProcesses)})");
        }
        await ClaimGuestAsync(nameof(IntrospectGuest), request);
        await RefuseEndedAsync(nameof(IntrospectGuest), input.MigrationId, input.Vm);
        return await Task.Run(() => IntrospectAllowedAsync(input, ct), ct);
    }

    private async Task<IntrospectionResult> IntrospectAllowedAsync(IntrospectGuest input, CancellationToken ct)
    {
        var guest = FindGuest(input.Guest);
        var live = guest.Live;
        var layout = guest.KernelLayout(); // the kernel's types: before the pause
        DateTimeOffset? pausedAt = null;
        if (live)
        {
            // Stop-and-copy: the guest stays paused from its scan to the end (it continues here if
            // the migration is undone, at the main host if not). A page written after a scan would
            // need to travel again, sealed (pre-copy): not done, the guest does not run meanwhile.
            await using var running = await guest.AttachAsync(ct);
            await running.PauseAsync(ct);
            pausedAt = DateTimeOffset.UtcNow;
        }
        try
        {
            return Classify(input, guest, layout, live, pausedAt, ct);
        }
        catch (Exception e) when (pausedAt is not null)
        {
            // Nothing here remembers the guest yet, so nothing else would let it run again.
            try
            {
                await using var running = await guest.AttachAsync(CancellationToken.None);
                await running.ContinueAsync(CancellationToken.None);
            }
#pragma warning disable CA1031 // the introspection's failure is the one to report; this one is logged
            catch (Exception x)
#pragma warning restore CA1031
            {
                logger.LogError("guest {Guest} stays paused: introspection failed ({Problem}) and it could not be continued: {Why}", input.Guest, e.Message, x.Message);
            }
            throw;
        }
    }

    private IntrospectionResult Classify(IntrospectGuest input, SourceGuest guest, KernelLayout layout, bool live, DateTimeOffset? pausedAt,
        CancellationToken ct)
    {
        using var memory = guest.OpenMemory();
        ct.ThrowIfCancellationRequested();
        var found = GuestIntrospection.Run(memory, layout, ct);
        var map = Classifier.Classify(memory, found, input.PlainProcesses.ToHashSet(StringComparer.Ordinal));
        var state = State(input.MigrationId);
        map.Save(state.MapPath);
        state.Guest = new MigratedGuest(input.Guest, input.Mode, live);
        state.EnsureKey();

        var chunks = Layout(memory, HandOverPages(guest, map.PfnLimit));
        var sent = new int[chunks.ChunkGuestPages.Count];
        var codec = new PageCodec(input.Mode, input.Vm, null, null);
        for (ulong pfn = 0; pfn < map.PfnLimit; pfn++)
        {
            if (map.IsGuestPage(pfn) && codec.WireClass(map[pfn]) != PageClass.Zero)
            {
                sent[pfn / (ulong)chunks.ChunkPages]++;
            }
        }
        logger.LogInformation("introspected VM {Vm}: {Zero} zero, {Plain} plain, {Sealed} sealed pages", input.Vm, map.Zero, map.Plain, map.Sealed);
        return new IntrospectionResult(new PageCounts((long)map.Zero, (long)map.Plain, (long)map.Sealed), (long)map.PfnLimit,
            found.Tasks.Count, found.Processes.Count, found.Diagnostics, chunks.ChunkPages, chunks.ChunkGuestPages, sent, chunks.HandOverPages, pausedAt);
    }

    /// <summary>Guest pages per chunk, from the memory's ranges: the same before the pause and after it.</summary>
    private static GuestLayout Layout(GuestMemory memory, long handOverPages)
    {
        var chunkPages = (int)Math.Max(512, (memory.PfnLimit + MaxChunks - 1) / MaxChunks);
        var chunks = new int[(memory.PfnLimit + (ulong)chunkPages - 1) / (ulong)chunkPages];
        foreach (var r in memory.Ranges)
        {
            for (var pfn = r.FirstPfn; pfn < r.EndPfn;)
            {
                var chunk = pfn / (ulong)chunkPages;
                var end = Math.Min(r.EndPfn, (chunk + 1) * (ulong)chunkPages);
                chunks[chunk] += (int)(end - pfn);
                pfn = end;
            }
        }
        return new GuestLayout((long)memory.PfnLimit, chunkPages, chunks, handOverPages);
    }

    [Activity("TransferPages")]
    public Task<TransferResult> TransferAsync(TransferPages input) => TransferAsync(input, ActivityExecutionContext.Current.CancellationToken);

    /// <summary>Seals (by mode) and sends one assignment's pages, a window of batches in flight. It
    /// resumes from the furthest point it knows was confirmed (the caller's, Temporal's last heartbeat,
    /// its own checkpoint file) and sends nothing below it again; storing a page twice is harmless.</summary>
    public async Task<TransferResult> TransferAsync(TransferPages input, CancellationToken ct)
    {
        await AllowTransferAsync(input);
        UseCapability(input.Capability, input.Assignment.Host, input.Vm);
        var a = input.Assignment;
        // One transfer per destination at a time: a request redelivered after a crash waits for the
        // retry running now and then finds the work done.
        var gate = transfers.GetOrAdd((input.MigrationId, a.Host), _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct);
        try
        {
            var state = State(input.MigrationId);
            var before = state.Checkpoint(a.Host);
            if (input.Round > before.Round)
            {
                // The host lost the VM: a new round sends what it no longer holds (all of it, when it kept
                // nothing), once; its retries go on from this round's own checkpoint.
                before = before with { Round = input.Round, Confirmed = input.StartOver ? a.FirstPfn : before.Confirmed };
                state.SaveCheckpoint(a.Host, before);
            }
            var heartbeat = await LastHeartbeatAsync();
            var resume = Math.Max(Math.Max(a.FirstPfn, input.ResumeFrom), Math.Max(before.Confirmed, heartbeat?.NextPfn ?? 0));
            var sentBefore = Math.Max(before.Sent, resume);

            var map = ClassificationMap.Load(state.MapPath);
            using var memory = FindGuest(state.Guest.Name).OpenMemory();
            using var key = state.LoadKey();
            var epoch = state.NextEpoch();
            // The baseline's sub-hosts decrypt: each gets a channel key of its own, derived from the data key,
            // and its pages are sealed under that (the main host, which gets the data key, needs none).
            using var channelKey = input.Mode == MigrationMode.AllEnc && input.ChannelKeyFor is not null ? key.ChannelKey(input.Vm, a.Host) : null;
            using var sealer = (channelKey ?? key).CreateSealer(input.Vm, epoch);
            var codec = new PageCodec(input.Mode, input.Vm, sealer, null);
            before = before with { Epochs = [.. before.Epochs ?? [], epoch] };
            state.SaveCheckpoint(a.Host, before); // an attempt that dies still counts its epoch as used
            if (channelKey is not null)
            {
                await client.SendChannelKeyAsync(a.Host, input.Vm, KeyWrap.Wrap(channelKey, input.ChannelKeyFor!, $"allenc-channel|{input.Vm:N}|{a.Host}"), ct);
            }

            var progress = new Progress(resume, CountGuestPages(map, a.FirstPfn, resume), before with { Attempts = before.Attempts + 1 });
            var zeros = new byte[PageRecord.PageSize];
            var window = new BatchWindow(BatchWindow.DefaultWindow, BatchWindow.DefaultSpare, BatchWindow.DefaultBatchBytes);
            var batch = await window.NextAsync(ct);
            var batchStart = resume;
            long resentPages = 0, batchGuestPages = 0;
            var clock = Stopwatch.StartNew();
            long bytesThisAttempt = 0;
            var signals = new ProgressSignals(logger);
            for (var pfn = resume; pfn < a.EndPfn; pfn++)
            {
                ct.ThrowIfCancellationRequested();
                if (map.IsGuestPage((ulong)pfn))
                {
                    batchGuestPages++;
                    var classified = map[(ulong)pfn];
                    if (codec.WireClass(classified) != PageClass.Zero) // free pages stay here: the manifest names them
                    {
                        var page = memory.IsPresent((ulong)pfn) ? memory.Page((ulong)pfn) : zeros; // missing from the dump: classified sealed
                        batch.Advance(codec.EncodeInto(batch.Next, (ulong)pfn, 1, classified, page));
                        resentPages += pfn < sentBefore ? 1 : 0;
                    }
                }
                if (batch.IsFull || (pfn + 1 == a.EndPfn && batch.Count > 0))
                {
                    var (send, from, to, guestPages) = (batch, batchStart, pfn + 1, batchGuestPages);
                    bytesThisAttempt += send.Length;
                    progress.Sent(from, to, send.Length, from < sentBefore ? resentPages : 0, from < sentBefore ? send.Length : 0);
                    (resentPages, batchGuestPages) = (0, 0);
                    await ThrottleAsync(send.Length, ct);
                    window.Send(send, b => PublishAsync(b, from, to, guestPages), ct);
                    (batch, batchStart) = (await window.NextAsync(ct), pfn + 1);
                }
            }
            await window.AllStoredAsync();
            progress.AllStored(a.EndPfn, a.Pages); // holes and free pages at the end of the range included
            var done = await ReportAsync(force: true);
            logger.LogInformation("transfer of VM {Vm} to {Host}: {Pages} pages, {Bytes} bytes in {Seconds:0.0} s, attempt {Attempt} ({Resent} bytes resent over all attempts)",
                input.Vm, a.Host, a.Pages, bytesThisAttempt, clock.Elapsed.TotalSeconds, done.Attempts, done.ResentBytes);
            var classes = ClassesIn(map, codec, a);
            return new TransferResult(a.Host, a.Pages, done.Bytes, done.ResentPages, done.ResentBytes, done.Attempts, classes.Classified, classes.Sent, done.Epochs);

            // The broker's confirm frees the batch's buffer; the host's ack, later, makes its pages count
            // as stored (progress, checkpoint, heartbeat).
            async Task<Task> PublishAsync(PageBatch send, long from, long to, long guestPages)
            {
                try
                {
                    return StoredAsync(await client.PublishStoreAsync(a.Host, input.Vm, send, ct), from, to, guestPages);
                }
                catch (PageProtocolException e) when (IsRefusal(e))
                {
                    throw Refused(e);
                }
            }

            async Task StoredAsync(Task stored, long from, long to, long guestPages)
            {
                try
                {
                    await stored;
                }
                catch (PageProtocolException e) when (IsRefusal(e))
                {
                    throw Refused(e);
                }
                progress.Confirmed(from, to, guestPages);
                await ReportAsync(force: false);
            }

            // Sending again would meet the same answer: the migration must be undone, or, when the host
            // no longer serves the VM (it was started there before this step), paging must start there again.
            static bool IsRefusal(PageProtocolException e) => e.Code is PageError.StoreFull or PageError.UnknownVm or PageError.Malformed;
            ApplicationFailureException Refused(PageProtocolException e) => e.Code == PageError.UnknownVm
                ? new($"{a.Host} no longer holds VM {input.Vm}: {e.Message}", StepErrors.DestinationLost, nonRetryable: true)
                : new($"{a.Host} refused pages of VM {input.Vm}: {e.Message}", nonRetryable: true);

            async Task<TransferCheckpoint> ReportAsync(bool force)
            {
                if (!progress.TryTakeReport(force, HeartbeatEvery, out var checkpoint, out var pagesDone))
                {
                    return checkpoint;
                }
                state.SaveCheckpoint(a.Host, checkpoint with { Sent = Math.Max(checkpoint.Sent, sentBefore) });
                var beat = new TransferProgress(input.MigrationId, a.Host, checkpoint.Confirmed, pagesDone, a.Pages, checkpoint.Bytes, input.Round);
                if (ActivityExecutionContext.HasCurrent)
                {
                    ActivityExecutionContext.Current.Heartbeat(beat);
                }
                signals.Offer(beat, last: force);
                await (await publish.GetSendEndpoint(progressExit)).Send(beat, ct);
                return checkpoint;
            }
        }
        finally
        {
            gate.Release();
        }
    }

    /// <summary>At most what the hand-over stores at the main host: the manifest (its map uncompressed),
    /// and for a running guest its kernel, initramfs and device state (QEMU's is well under 1 MiB).</summary>
    private static long HandOverPages(SourceGuest guest, ulong pfnLimit) => HandOverPages(guest.Live ? guest.Kit : null, pfnLimit, guest.TakenOver?.Initrd?.Length, guest.TakenOver?.Kernel?.Length);

    /// <summary>What a guest's hand-over stores at its main host besides its pages, at most: the manifest, and a
    /// running guest's (its kit in <paramref name="liveKit"/>) kernel, initramfs and device state (1 MiB). A guest
    /// taken over here keeps its initramfs and kernel in memory (<paramref name="initrdBytes"/>,
    /// <paramref name="kernelBytes"/>), not in its kit.</summary>
    public static long HandOverPages(string? liveKit, ulong pfnLimit, long? initrdBytes = null, long? kernelBytes = null)
    {
        static long Pages(long bytes) => (bytes + PageRecord.PageSize - 1) / PageRecord.PageSize + 1;
        return Pages(ClassificationMap.ByteSizeFor(pfnLimit)) + (liveKit is null ? 0
            : Pages(kernelBytes ?? new FileInfo(BootedGuest.KernelIn(liveKit)).Length) + Pages(initrdBytes ?? new FileInfo(Path.Combine(liveKit, "initrd.gz")).Length) + Pages(1 << 20));
    }

    /// <summary>Holds all transfers of this host together to its limit: each batch takes the next free
    /// slot on one shared timeline and waits until its start, so three destinations share the limit
    /// rather than each getting it. An idle spell is not saved up for a burst later.</summary>
    private async Task ThrottleAsync(long bytes, CancellationToken ct)
    {
        if (host.MaxTransferMBps <= 0)
        {
            return;
        }
        TimeSpan wait;
        lock (throttle)
        {
            var now = throttle.Clock.Elapsed;
            var start = throttle.NextFree > now ? throttle.NextFree : now;
            throttle.NextFree = start + TimeSpan.FromSeconds(bytes / (host.MaxTransferMBps * 1e6));
            wait = start - now;
        }
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait, ct);
        }
    }

    private sealed class Throttle
    {
        public Stopwatch Clock { get; } = Stopwatch.StartNew();

        public TimeSpan NextFree { get; set; }
    }

    /// <summary>Sends the main host the manifest (the class of every page as it travels, sealed under a
    /// fresh epoch of the data key, over the page path: it never passes through a step's payload) and
    /// wraps the data key for the main host. Sent again on a retry: storing it twice is harmless.</summary>
    [Activity("HandOver")]
    public async Task<HandedOver> HandOverAsync(HandOver input)
    {
        var request = await guard.AllowAsync(nameof(HandOver), input.MigrationId, input.Vm, input.Request);
        await RefuseEndedAsync(nameof(HandOver), input.MigrationId, input.Vm);
        // The data key is wrapped only for the main host the operator named, under the key it pinned.
        if (input.Main != request.Main.Host || StepGuard.PinnedKey(request, input.Main) is not { } pinned || !pinned.AsSpan().SequenceEqual(input.MainPublicKey))
        {
            throw await guard.RefuseAsync(nameof(HandOver), input.MigrationId, input.Vm,
                $"the data key would be wrapped for {input.Main}'s key {HostKeyPair.Fingerprint(input.MainPublicKey)}; the request's main host is {request.Main.Host}, " +
                $"its pinned key {(StepGuard.PinnedKey(request, request.Main.Host) is { } k ? HostKeyPair.Fingerprint(k) : "missing")}");
        }
        UseCapability(input.Capability, input.Main, input.Vm);
        var state = State(input.MigrationId);
        var guest = state.Guest;
        var codec = new PageCodec(guest.Mode, input.Vm, null, null);
        var map = ClassificationMap.Load(state.MapPath).Select(codec.WireClass);
        using var key = state.LoadKey();
        var epoch = state.NextEpoch();
        using var sealer = key.CreateSealer(input.Vm, epoch);
        var manifest = map.ToBytes();
        var records = SealedBlob.Seal(BlobKind.Manifest, manifest, sealer);
        if (guest.Live)
        {
            // A running guest's core goes with it: its device state (saved now, while it is paused) and
            // the kernel and initramfs its QEMU runs, sealed like everything else, to the main host only.
            var here = FindGuest(guest.Name);
            var deviceState = Path.Combine(host.MigrationDirectory(input.MigrationId), "device.state");
            try
            {
                await using (var running = await here.AttachAsync(StepToken.Current))
                {
                    await running.SaveDeviceStateAsync(deviceState, StepToken.Current);
                }
                records.AddRange(SealedBlob.Seal(BlobKind.DeviceState, await File.ReadAllBytesAsync(deviceState), sealer));
            }
            finally
            {
                File.Delete(deviceState); // the vCPUs' registers in the clear: never left behind, whatever failed
            }
            records.AddRange(SealedBlob.Seal(BlobKind.Kernel, here.ReadKernel(), sealer));
            records.AddRange(SealedBlob.Seal(BlobKind.Initrd, here.TakenOver?.Initrd ?? await File.ReadAllBytesAsync(here.InitrdPath), sealer));
        }
        // All at once (a running guest's kernel is a dozen batches): the guest is paused meanwhile.
        try
        {
            await Task.WhenAll(records.Chunk(BatchWindow.DefaultBatchBytes / (PageRecord.HeaderSize + PageRecord.SealedBodySize))
                .Select(part => client.StoreAsync(input.Main, input.Vm, part, StepToken.Current)));
        }
        catch (PageProtocolException e) when (e.Code is PageError.StoreFull or PageError.UnknownVm)
        {
            throw new ApplicationFailureException($"{input.Main} refused the manifest of VM {input.Vm}: {e.Message}", nonRetryable: true);
        }
        var bytes = records.Sum(r => (long)r.WireSize);
        logger.LogInformation("VM {Vm}: manifest of {Pages} pages sent to {Main} in {Bytes} bytes", input.Vm, map.PfnLimit, input.Main, bytes);
        var digest = Convert.ToHexString(SHA256.HashData(manifest));
        state.MarkHandedOver(); // before the key leaves: an undo from here on takes the main host's word
        return new HandedOver(KeyWrap.WrapFrom(key, keys, input.MainPublicKey, KeyContext(input.MigrationId, input.Vm, input.Main, epoch, digest)), bytes, digest, epoch);
    }

    /// <summary>What the source sent, page by page: the bytes of every guest page, zeros for a page that
    /// travelled as free (the main host must see zeros there, whatever stale bytes remain here).</summary>
    [Activity("DigestMemory")]
    public async Task<MemoryDigest> DigestAsync(DigestMemory input)
    {
        CheckHost(input.Host);
        var request = await guard.AllowAsync(nameof(DigestMemory), input.MigrationId, input.Vm, input.Request);
        if (request.Source != host.Host)
        {
            throw await guard.RefuseAsync(nameof(DigestMemory), input.MigrationId, input.Vm, $"the request's source is {request.Source}, not {host.Host}");
        }
        var state = State(input.MigrationId);
        var map = File.Exists(state.MapPath) ? ClassificationMap.Load(state.MapPath)
            : throw new ApplicationFailureException($"migration {input.MigrationId} classified no guest at {host.Host}: nothing to digest", nonRetryable: true);
        await guard.AllowDigestAsync(input, map.PfnLimit);
        using var digest = new PageDigests(input, map.PfnLimit, state.DigestKey(input.Vm));
        return await Task.Run(() => Digest(input, state, map, digest));
    }

    private MemoryDigest Digest(DigestMemory input, SourceState state, ClassificationMap map, PageDigests digest)
    {
        var guest = state.Guest;
        var codec = new PageCodec(guest.Mode, input.Vm, null, null);
        using var memory = FindGuest(guest.Name).OpenMemory();
        var zeros = new byte[PageRecord.PageSize];
        for (var pfn = (ulong)input.FirstPfn; pfn < (ulong)input.EndPfn; pfn++)
        {
            if (map.IsGuestPage(pfn))
            {
                digest.Add(pfn, codec.WireClass(map[pfn]) == PageClass.Zero || !memory.IsPresent(pfn) ? zeros : memory.Page(pfn));
            }
        }
        return digest.Result(fetchedPages: 0);
    }

    private void CheckHost(string wanted)
    {
        if (wanted != host.Host)
        {
            throw new ApplicationFailureException($"a step for host {wanted} reached host {host.Host}", nonRetryable: true);
        }
    }

    /// <summary>Drops the migration's key; a running guest ends here when it has left (it runs at the
    /// main host now) and continues here when the migration was undone. One that this host had taken
    /// over ends as a VM of this main host ends (StopVm): its pager stops and the hosts that held its
    /// pages for it release them.</summary>
    [Activity("ReleaseSource")]
    public async Task<SourceReleased> ReleaseSourceAsync(ReleaseSource input)
    {
        var request = await guard.AllowAsync(nameof(ReleaseSource), input.MigrationId, input.Vm, input.Request, expiredToo: true);
        var state = State(input.MigrationId);
        if (state.Released)
        {
            return new SourceReleased(input.VmLeft); // done before (a retry, or a replay: nothing left to do)
        }
        if (input.VmLeft && !(state.HasKey && input.Receipt is { } receipt && HasReceipt(state, receipt, input, request.Main.Host)))
        {
            throw await guard.RefuseAsync(nameof(ReleaseSource), input.MigrationId, input.Vm,
                $"that the VM left takes the switch-over receipt of main host {request.Main.Host}, and {(input.Receipt is null ? "none came" : "this one is not it")}");
        }
        if (!input.VmLeft && state.HandedOver && !Declined(input, request))
        {
            // The key went to the main host: the VM may run there, and continuing it here too would run it twice.
            throw await guard.RefuseAsync(nameof(ReleaseSource), input.MigrationId, input.Vm,
                $"the VM may run at main host {request.Main.Host}, which has its key: undoing takes that host's word that it declined the VM, and " +
                $"{(input.Receipt is null ? "none came" : "this is not it")} (the VM stays paused here; `semigrate vm list` says where it runs)");
        }
        if (state.HasGuest && state.Guest is { Live: true } guest && TryFindGuest(guest.Name) is { } here
            && (here.TakenOver is not null || File.Exists(LiveGuest.SocketIn(here.Kit))))
        {
            if (input.VmLeft && here.TakenOver is { } vm)
            {
                await mainHost!.StopLeftVmAsync(new StopVm(vm.MigrationId, vm.Vm, host.Host));
            }
            else
            {
                await using (var running = await here.AttachAsync(StepToken.Current))
                {
                    await (input.VmLeft ? running.QuitAsync() : running.ContinueAsync(StepToken.Current));
                }
                if (input.VmLeft)
                {
                    // Its RAM in the clear, of a guest that runs elsewhere now: nothing of it stays on this disk.
                    logger.LogInformation("VM {Vm} left: {Bytes} bytes of its RAM file erased", input.Vm, RamErasure.Erase(here.Memory));
                }
            }
        }
        state.Release(input.Vm);
        client.ForgetVm(input.Vm); // its capabilities at the destinations: nothing here sends to them any more
        logger.LogInformation(input.VmLeft ? "VM {Vm} left this host: its migration key is gone" : "VM {Vm} stays on this host: migration {Migration} undone",
            input.Vm, input.MigrationId);
        return new SourceReleased(input.VmLeft);
    }

    /// <summary>Whether the undo's receipt is the main host's proof that it declined the VM (made with its key
    /// pair and this host's pinned key: nobody else can make it).</summary>
    private bool Declined(ReleaseSource input, MigrationRequest request)
    {
        if (input.Receipt is not { } receipt || StepGuard.PinnedKey(request, request.Main.Host) is not { } mainKey)
        {
            return false;
        }
        byte[] shown;
        try
        {
            shown = Convert.FromHexString(receipt);
        }
        catch (FormatException)
        {
            return false;
        }
        return CryptographicOperations.FixedTimeEquals(shown, keys.Vouch(mainKey, TakeOvers.DeclinedStatement(input.MigrationId, input.Vm, request.Main.Host)));
    }

    /// <summary>Refuses a transfer the request does not allow: another mode, or an assignment that is not in
    /// the placement this host computes from the request and its own guest's layout.</summary>
    private async Task AllowTransferAsync(TransferPages input)
    {
        const string step = nameof(TransferPages);
        var request = await guard.AllowAsync(step, input.MigrationId, input.Vm, input.Request);
        await RefuseEndedAsync(step, input.MigrationId, input.Vm);
        var state = State(input.MigrationId);
        var guest = state.HasGuest ? state.Guest : throw await guard.RefuseAsync(step, input.MigrationId, input.Vm, "the guest was not introspected here for this migration");
        if (input.Mode != request.Mode || guest.Mode != request.Mode)
        {
            throw await guard.RefuseAsync(step, input.MigrationId, input.Vm, $"the transfer is in {input.Mode}, the request's mode is {request.Mode}");
        }
        PlacementPlan plan;
        using (var memory = FindGuest(guest.Name).OpenMemory())
        {
            var layout = Layout(memory, 0);
            try
            {
                plan = Placement.Plan(layout.ChunkGuestPages, layout.ChunkPages, request.Main, request.SubHosts);
            }
            catch (PlacementException e)
            {
                throw await guard.RefuseAsync(step, input.MigrationId, input.Vm, $"the request places no pages here: {e.Message}");
            }
        }
        if (!plan.Assignments.Contains(input.Assignment))
        {
            var a = input.Assignment;
            throw await guard.RefuseAsync(step, input.MigrationId, input.Vm,
                $"pages 0x{a.FirstPfn:x}-0x{a.EndPfn:x} to {a.Host} are not in the placement of the request ({string.Join(", ", plan.Assignments.Select(p => $"{p.Host} 0x{p.FirstPfn:x}-0x{p.EndPfn:x}"))})");
        }
        // The baseline's channel key is wrapped only for the key the operator pinned for that sub-host (its
        // memory server's is the host's own), never for a key a reply named.
        if (input.ChannelKeyFor is { } named && (StepGuard.PinnedKey(request, input.Assignment.Host) is not { } pinned || !named.AsSpan().SequenceEqual(pinned)))
        {
            throw await guard.RefuseAsync(step, input.MigrationId, input.Vm,
                $"the channel key for {input.Assignment.Host} would be wrapped for key {HostKeyPair.Fingerprint(named)}, not the one the request pins for it");
        }
    }

    /// <summary>Addresses the VM at <paramref name="at"/> as the holder of its capability, which that host
    /// wrapped for this one (none in a history from before capabilities: the VM's queues have plain names).</summary>
    private void UseCapability(byte[]? wrapped, string at, Guid vm)
    {
        if (wrapped is null)
        {
            return;
        }
        try
        {
            client.UseCapability(at, vm, KeyWrap.UnwrapSecret(wrapped, keys, VmCapabilities.WrapContext(vm, at, VmCapabilities.SourceHolder)));
        }
        catch (CryptographicException e)
        {
            throw new ApplicationFailureException($"the capability of {at} for VM {vm} does not open with this host's key: {e.Message}", nonRetryable: true);
        }
    }

    private static bool HasReceipt(SourceState state, string receipt, ReleaseSource input, string main)
    {
        byte[] bytes;
        try
        {
            bytes = Convert.FromHexString(receipt);
        }
        catch (FormatException)
        {
            return false;
        }
        using var key = state.LoadKey();
        return key.IsReceipt(bytes, input.MigrationId, input.Vm, main);
    }

    /// <summary>What the wrapped data key is bound to: a wrap for another migration or host does not open.</summary>
    /// <summary>What the data key's wrap is bound to: the migration, its VM, its main host, and the hand-over
    /// (its epoch and the manifest's digest), so the key of one hand-over opens no other's blobs.</summary>
    public static string KeyContext(Guid migrationId, Guid vm, string main, uint epoch, string manifestDigest) =>
        $"semigrate-data-key v2|{migrationId:N}|{vm:N}|{main}|{epoch}|{manifestDigest.ToUpperInvariant()}";

    private SourceState State(Guid migrationId) => new(host, migrationId);

    /// <summary>This host's guest <paramref name="name"/>: as `semigrate guest boot` or `guest start` leaves
    /// it, or a running guest taken over here.</summary>
    private SourceGuest FindGuest(string name) => TryFindGuest(name, out var missing) ?? throw new ApplicationFailureException(
        $"host {host.Host} has no guest '{name}' ({missing} does not exist; guests made by `semigrate guest boot` live in {Path.GetDirectoryName(host.GuestDirectory(name))})",
        nonRetryable: true);

    private SourceGuest? TryFindGuest(string name) => TryFindGuest(name, out _);

    private SourceGuest? TryFindGuest(string name, out string? missing)
    {
        var dir = host.GuestDirectory(name); // refuses a name that is a path
        missing = null;
        if (mainHost?.GuestNamed(name) is { Ram: { } ram, Kit: { } kit } vm)
        {
            return new SourceGuest(name, ram.FilePath, kit, Live: true, vm);
        }
        // A running guest's memory is its RAM file (read while it is paused); a booted one's, its dump.
        var live = LiveGuest.IsLive(dir);
        var guest = new SourceGuest(name, live ? LiveGuest.RamIn(dir) : BootedGuest.DumpIn(dir), dir, live);
        missing = new[] { guest.Memory, guest.KernelPath }.FirstOrDefault(p => !File.Exists(p));
        return missing is null ? guest : null;
    }

    /// <summary>The assignment's pages by class, and by the class they travel as in this mode (what the audit checks).</summary>
    private static (PageCounts Classified, PageCounts Sent) ClassesIn(ClassificationMap map, PageCodec codec, Assignment a)
    {
        Span<long> classified = stackalloc long[3], sent = stackalloc long[3];
        for (var pfn = (ulong)a.FirstPfn; pfn < (ulong)a.EndPfn; pfn++)
        {
            if (map.IsGuestPage(pfn))
            {
                classified[(int)map[pfn]]++;
                sent[(int)codec.WireClass(map[pfn])]++;
            }
        }
        return (new PageCounts(classified[(int)PageClass.Zero], classified[(int)PageClass.Plain], classified[(int)PageClass.Sealed]),
            new PageCounts(sent[(int)PageClass.Zero], sent[(int)PageClass.Plain], sent[(int)PageClass.Sealed]));
    }

    private static long CountGuestPages(ClassificationMap map, long from, long to)
    {
        long n = 0;
        for (var pfn = from; pfn < to; pfn++)
        {
            n += map.IsGuestPage((ulong)pfn) ? 1 : 0;
        }
        return n;
    }

    private static async Task<TransferProgress?> LastHeartbeatAsync() =>
        ActivityExecutionContext.HasCurrent && ActivityExecutionContext.Current.Info.HeartbeatDetails.Count > 0
            ? await ActivityExecutionContext.Current.Info.HeartbeatDetailAtAsync<TransferProgress>(0)
            : null;

    /// <summary>Which batches are out and which are stored: the confirmed point only moves over a
    /// contiguous run of stored batches, since they complete out of order. Sums carry on from the
    /// checkpoint of earlier attempts.</summary>
    private sealed class Progress(long resume, long pagesBefore, TransferCheckpoint start)
    {
        private readonly SortedDictionary<long, (long End, bool Stored)> batches = [];
        private readonly Stopwatch sinceReport = Stopwatch.StartNew();
        private TransferCheckpoint now = start with { Confirmed = resume, Sent = Math.Max(start.Sent, resume) };
        private long pagesDone = pagesBefore;

        public void Sent(long from, long to, long bytes, long resentPages, long resentBytes)
        {
            lock (batches)
            {
                batches[from] = (to, false);
                now = now with
                {
                    Sent = Math.Max(now.Sent, to),
                    Bytes = now.Bytes + bytes,
                    ResentPages = now.ResentPages + resentPages,
                    ResentBytes = now.ResentBytes + resentBytes,
                };
            }
        }

        public void Confirmed(long from, long to, long pages)
        {
            lock (batches)
            {
                batches[from] = (to, true);
                pagesDone += pages;
                while (batches.Count > 0 && batches.First() is var (first, (end, stored)) && stored && first <= now.Confirmed)
                {
                    now = now with { Confirmed = Math.Max(now.Confirmed, end) };
                    batches.Remove(first);
                }
            }
        }

        public void AllStored(long end, long pages)
        {
            lock (batches)
            {
                now = now with { Confirmed = Math.Max(now.Confirmed, end), Sent = Math.Max(now.Sent, end) };
                pagesDone = pages;
            }
        }

        public bool TryTakeReport(bool force, TimeSpan every, out TransferCheckpoint checkpoint, out long done)
        {
            lock (batches)
            {
                (checkpoint, done) = (now, pagesDone);
                if (!force && sinceReport.Elapsed < every)
                {
                    return false;
                }
                sinceReport.Restart();
                return true;
            }
        }
    }
}
