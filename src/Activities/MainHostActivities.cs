using System.Diagnostics;
using System.Security.Cryptography;
using MassTransit;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Guest.Fuse;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection.Classification;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.MainHost;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>The main host's steps: take over the VM at switch-over (unwrap the data key, open the
/// manifest the source sent, build the page table, and serve the VM's pages through its pager: its own
/// share from this host's store, where the source's transfer put it, the rest from the sub-hosts), and
/// digest the VM's memory as the pager serves it.</summary>
public sealed class MainHostActivities(
    HostContext host, PageClient client, IPageStore store, HostKeyPair keys, MainHostVms vms, IBus publish, AuditRoute audit, StepGuard guard, VmCapabilities ownCapabilities,
    TakeOvers takeOvers, ILogger<MainHostActivities> logger)
{
    /// <summary>Pages read per pager call when digesting: 2 MiB, a FUSE block.</summary>
    private const int ReadBatch = 512;

    /// <summary>Takes the VM over. A cancel stops it until the point of no return (the guest continues
    /// here, or a memory dump's VM is registered here); after that it finishes, and the migration with it.
    /// It heartbeats throughout, so Temporal delivers a cancel at once.</summary>
    [Activity("SwitchOver")]
    public async Task<SwitchedOverResult> SwitchOverAsync(SwitchOver input)
    {
        if (input.Main != host.Host)
        {
            throw new ApplicationFailureException($"switch-over for main host {input.Main} reached host {host.Host}", nonRetryable: true);
        }
        var request = await guard.AllowAsync(nameof(SwitchOver), input.MigrationId, input.Vm, input.Request);
        if (vms.Find(input.Vm) is { } running)
        {
            return running.MigrationId == input.MigrationId ? running.SwitchedOver // a retry after the answer was lost: the VM already runs here
                : throw await guard.RefuseAsync(nameof(SwitchOver), input.MigrationId, input.Vm, $"VM {input.Vm} already runs here, brought by migration {running.MigrationId}");
        }
        if (takeOvers.Declined(input.MigrationId))
        {
            throw await guard.RefuseAsync(nameof(SwitchOver), input.MigrationId, input.Vm,
                $"this host declined migration {input.MigrationId} (its pages were released here to undo it): the VM stays at its source");
        }
        if (request.Main.Host != host.Host || request.Mode != input.Mode
            || input.Placement.Assignments.Any(a => !StepGuard.IsDestination(request, a.Host)))
        {
            throw await guard.RefuseAsync(nameof(SwitchOver), input.MigrationId, input.Vm,
                $"the request moves the VM in {request.Mode} to main host {request.Main.Host} and sub-hosts {string.Join(", ", request.SubHosts.Select(d => d.Host))}; " +
                $"this switch-over is in {input.Mode} at {host.Host} with pages at {string.Join(", ", input.Placement.Assignments.Select(a => a.Host).Distinct())}");
        }
        using var heartbeats = StepToken.Heartbeats(TimeSpan.FromSeconds(2));
        var ct = StepToken.Current;
        ct.ThrowIfCancellationRequested();
        // The key is taken only as the source's (its pinned key), for this hand-over: anyone can wrap a key
        // for this host, and one of an attacker's own would open blobs (a migration stream for QEMU) of its own.
        var sourceKey = StepGuard.PinnedKey(request, request.Source)
            ?? throw await guard.RefuseAsync(nameof(SwitchOver), input.MigrationId, input.Vm, $"the request pins no key for its source {request.Source}");
        DataKey key;
        try
        {
            key = KeyWrap.UnwrapFrom(input.WrappedKey, keys, sourceKey,
                SourceActivities.KeyContext(input.MigrationId, input.Vm, host.Host, input.Epoch, input.ManifestDigest ?? ""));
        }
        catch (CryptographicException e)
        {
            throw await guard.RefuseAsync(nameof(SwitchOver), input.MigrationId, input.Vm,
                $"the data key is not the source {request.Source}'s wrap for this host and this hand-over (epoch {input.Epoch}): {e.Message}");
        }
        var capabilities = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var c in input.Capabilities ?? [])
        {
            try
            {
                capabilities[c.Host] = KeyWrap.UnwrapSecret(c.Wrapped, keys, VmCapabilities.WrapContext(input.Vm, c.Host, VmCapabilities.MainHolder));
                client.UseCapability(c.Host, input.Vm, capabilities[c.Host]); // the pager addresses the VM there as its holder
            }
            catch (CryptographicException e)
            {
                key.Dispose();
                throw new ApplicationFailureException($"the capability of {c.Host} for VM {input.Vm} does not open with this host's key: {e.Message}", nonRetryable: true);
            }
        }
        var opener = new PageOpener(key, input.Vm);
        // What the source handed over is in this host's store, as sealed records (SealedBlob).
        Func<ulong, PageRecord?> blobs = pfn => store.Get(input.Vm, pfn) is { } r ? PageFrame.ReadRecord(r) : null;
        ClassificationMap manifest;
        string manifestDigest;
        try
        {
            var content = SealedBlob.Open(BlobKind.Manifest, input.Vm, blobs, opener, host.Host, maxContent: SealedBlob.MaxBytes * 4, epoch: input.Epoch);
            manifestDigest = Convert.ToHexString(SHA256.HashData(content));
            if (!string.Equals(manifestDigest, input.ManifestDigest, StringComparison.OrdinalIgnoreCase))
            {
                throw new PageIntegrityException(input.Vm, SealedBlob.FirstPfn(BlobKind.Manifest), host.Host,
                    $"the manifest stored here is not the one the source handed over (SHA-256 {manifestDigest}, not {input.ManifestDigest})");
            }
            manifest = ClassificationMap.FromBytes(content, "the manifest");
        }
        catch (PageIntegrityException e)
        {
            opener.Dispose();
            key.Dispose(); // nothing runs here: the key goes now, not whenever the collector comes
            await ReportAsync(input.MigrationId, e);
            throw new ApplicationFailureException(e.Message, nonRetryable: true);
        }
        var table = new PageTable(manifest.PfnLimit);
        for (ulong pfn = 0; pfn < manifest.PfnLimit; pfn++)
        {
            if (manifest.IsGuestPage(pfn))
            {
                table.Set(pfn, manifest[pfn], 1);
            }
        }
        var epochs = new EpochFile(Path.Combine(host.MigrationDirectory(input.MigrationId), "page-out-epoch"), PageOutEpochs);
        var codec = new PageCodec(input.Mode, input.Vm, key.CreateSealer(input.Vm, epochs.Next()), opener, Channels(input, key, epochs));
        var unavailable = new System.Collections.Concurrent.ConcurrentDictionary<string, DateTime>(StringComparer.Ordinal);
        var pager = new VmPager(client, codec, table, pfn => MainHostVms.RunningVm.HostOf(input.Placement, pfn), host.Host, store,
            e => new ValueTask(ReportAsync(input.MigrationId, e)),
            (e, pfn, count) => new ValueTask(UnavailableAsync(input.MigrationId, input.Vm, e, pfn, count, unavailable)));
        var local = input.Placement.Assignments.Where(a => a.Host == host.Host).Sum(a => a.Pages);
        if (!SealedBlob.IsThere(BlobKind.DeviceState, blobs))
        {
            ct.ThrowIfCancellationRequested(); // the point of no return of a memory dump's VM: registered here next
            await TakeOverAsync(input);
        }
        var live = SealedBlob.IsThere(BlobKind.DeviceState, blobs);
        var name = live ? NameHere(input) : null; // before the guest runs here: a bad name refuses the switch-over
        var kit = Path.Combine(host.MigrationDirectory(input.MigrationId), "vm");
        var (guest, ram, memory, initrd, kernel) = live
            ? await RunAsync(input, kit, opener, blobs, pager, manifest.PfnLimit, budgetPages: local)
            : (null, null, null, null, null);
        var result = new SwitchedOverResult(host.Host, local, (long)manifest.GuestPages - local, guest is not null, guest is null ? null : DateTimeOffset.UtcNow, manifestDigest,
            Convert.ToHexString(key.Receipt(input.MigrationId, input.Vm, host.Host)));
        vms.Add(new MainHostVms.RunningVm(input.Vm, input.MigrationId, result, manifest, pager, input.Placement, guest, ram, memory, name, live ? kit : null, capabilities,
            key.DigestKey(input.Vm), initrd, kernel));
        logger.LogInformation("VM {Vm} switched over to {Host}: {Local} pages here, {Remote} at sub-hosts, {Zero} of all free", input.Vm, host.Host,
            result.LocalPages, result.RemotePages, table.Pages - manifest.Plain - manifest.Sealed);
        return result;
    }

    /// <summary>What a running guest's start leaves on disk for a moment, in the clear: its kernel and initramfs
    /// until QEMU has read them, its device state until QEMU has loaded it. A worker that died between writes
    /// and deletes left them: deleted before this host takes a step again.</summary>
    public static void EraseClearCopies(string stateDirectory)
    {
        var migrations = Path.Combine(stateDirectory, "migrations");
        if (!Directory.Exists(migrations))
        {
            return;
        }
        foreach (var kit in Directory.EnumerateDirectories(migrations).Select(m => Path.Combine(m, "vm")).Where(Directory.Exists))
        {
            var (kernel, initrd, deviceState) = ClearCopiesIn(kit);
            File.Delete(kernel);
            File.Delete(initrd);
            File.Delete(deviceState);
        }
    }

    /// <summary>Where a running guest's start puts its clear copies in its kit (see <see cref="EraseClearCopies"/>).</summary>
    private static (string Kernel, string Initrd, string DeviceState) ClearCopiesIn(string kit) =>
        (BootedGuest.KernelIn(kit), Path.Combine(kit, "initrd.gz"), Path.Combine(kit, "device.state"));

    /// <summary>A running guest continues here: its kernel, initramfs and device state come out of the
    /// sealed blobs the source handed over; its RAM is a FUSE file served by its pager, kept within
    /// this host's share (<paramref name="budgetPages"/>); QEMU starts with -incoming, loads the device
    /// state and continues the guest where it stopped.</summary>
    private async Task<(LiveGuest, FuseRamFile, PagedRam, byte[] Initrd, byte[] Kernel)> RunAsync(SwitchOver input, string folder, PageOpener opener, Func<ulong, PageRecord?> blobs, VmPager pager,
        ulong pages, long budgetPages)
    {
        var clock = Stopwatch.StartNew();
        Directory.CreateDirectory(folder);
        byte[] Blob(BlobKind kind) => SealedBlob.Open(kind, input.Vm, blobs, opener, host.Host, SealedBlob.MaxBytes * 4, input.Epoch);
        // The initramfs may hold the guest's disk keys, and the kernel is the guest's own: each is on disk
        // only until QEMU has read it (at its start), then kept in this process (to move the guest on;
        // introspection reads the kernel's types from it).
        var kernel = Blob(BlobKind.Kernel);
        var initrd = Blob(BlobKind.Initrd);
        var (kernelPath, initrdPath, deviceState) = ClearCopiesIn(folder);
        await File.WriteAllBytesAsync(deviceState, Blob(BlobKind.DeviceState));
        var size = (long)pages * PageRecord.PageSize;
        var memory = new PagedRam(pager, pages, size, budgetPages, line => logger.LogError("VM {Vm} RAM: {Problem}", input.Vm, line), host.Eviction);
        var opened = clock.Elapsed;
        var ram = await FuseRamFile.MountAsync(Path.Combine(folder, "ram"), "ram", memory,
            line => logger.LogError("VM {Vm} RAM: {Problem}", input.Vm, line), PagedRam.ReadaheadBytes);
        memory.StartEviction(ram);
        var mounted = clock.Elapsed;
        LiveGuest? guest = null;
        try
        {
            try
            {
                await File.WriteAllBytesAsync(kernelPath, kernel);
                await File.WriteAllBytesAsync(initrdPath, initrd);
                guest = await LiveGuest.StartAsync(folder, (int)(size >> 20), ram.FilePath, Path.Combine(folder, "serial.log"), incoming: true, StepToken.Current);
            }
            finally
            {
                File.Delete(kernelPath);
                File.Delete(initrdPath);
            }
            var started = clock.Elapsed;
            try
            {
                await guest.LoadDeviceStateAsync(deviceState, StepToken.Current);
            }
            finally
            {
                File.Delete(deviceState); // the vCPUs' registers in the clear: QEMU has them now, or never will
            }
            var loaded = clock.Elapsed;
            // The point of no return: once the guest runs here, a cancel no longer stops the switch-over.
            StepToken.Current.ThrowIfCancellationRequested();
            await TakeOverAsync(input);
            await guest.ContinueAsync(CancellationToken.None);
            logger.LogInformation("VM {Vm} runs here (QEMU {Pid}), its RAM served from {Ram}, at most {Budget} pages resident; blobs opened in {Blobs:0} ms, " +
                "RAM mounted in {Mount:0}, QEMU up in {Qemu:0}, device state loaded in {Load:0}, continued in {Continue:0}", input.Vm, guest.Pid, ram.FilePath, budgetPages,
                opened.TotalMilliseconds, (mounted - opened).TotalMilliseconds, (started - mounted).TotalMilliseconds, (loaded - started).TotalMilliseconds,
                (clock.Elapsed - loaded).TotalMilliseconds);
            return (guest, ram, memory, initrd, kernel);
        }
        catch
        {
            File.Delete(deviceState);
            if (guest is not null)
            {
                await guest.DisposeAsync();
            }
            await ram.DisposeAsync();
            await memory.DisposeAsync();
            throw;
        }
    }

    /// <summary>The VM is this host's from here on, unless this host declined its migration meanwhile (an undo
    /// raced the switch-over): then the switch-over stops and the VM stays at its source.</summary>
    private async Task TakeOverAsync(SwitchOver input)
    {
        if (!takeOvers.TryTakeOver(input.MigrationId))
        {
            throw await guard.RefuseAsync(nameof(SwitchOver), input.MigrationId, input.Vm,
                $"this host declined migration {input.MigrationId} during its switch-over (an undo came first): the VM stays at its source");
        }
    }

    /// <summary>allenc: each sub-host's pages are under its own channel key (derived from the data key, as
    /// the source sealed them): page-ins open, and page-outs seal under a fresh epoch, with that host's key.</summary>
    private Func<string, (PageSealer Sealer, PageOpener Opener)?>? Channels(SwitchOver input, DataKey key, EpochFile epochs)
    {
        if (input.Mode != Contracts.MigrationMode.AllEnc)
        {
            return null;
        }
        var perHost = new System.Collections.Concurrent.ConcurrentDictionary<string, Lazy<(PageSealer, PageOpener)>>(StringComparer.Ordinal);
        return at => at == host.Host ? null : perHost.GetOrAdd(at, _ => new(() =>
        {
            var channel = key.ChannelKey(input.Vm, at); // held by its opener for the VM's life
            return (channel.CreateSealer(input.Vm, epochs.Next()), new PageOpener(channel, input.Vm));
        })).Value;
    }

    /// <summary>The running guest taken over here that goes by <paramref name="name"/>, if any.</summary>
    public MainHostVms.RunningVm? GuestNamed(string name) => vms.All.FirstOrDefault(v => v.GuestName == name && v.Guest is not null);

    /// <summary>The name a running guest taken over here goes by: its source's, unless a guest of this
    /// host has it already (then with the VM's id appended). A guest that left this host, or stopped,
    /// keeps its folder but not its name.</summary>
    private string NameHere(SwitchOver input)
    {
        var name = input.Guest ?? $"vm-{input.Vm:N}";
        var folder = host.GuestDirectory(name);
        var taken = LiveGuest.IsRunning(folder) || File.Exists(BootedGuest.DumpIn(folder)) || vms.All.Any(v => v.GuestName == name && v.Vm != input.Vm);
        return taken ? $"{name}-{input.Vm.ToString("N")[..8]}" : name;
    }

    /// <summary>The VM's memory as it was migrated: every guest page read through the pager (a running
    /// guest's later writes are not in it).</summary>
    [Activity("DigestMemory")]
    public async Task<MemoryDigest> DigestAsync(DigestMemory input)
    {
        if (input.Host != host.Host)
        {
            throw new ApplicationFailureException($"a step for host {input.Host} reached host {host.Host}", nonRetryable: true);
        }
        var request = await guard.AllowAsync(nameof(DigestMemory), input.MigrationId, input.Vm, input.Request);
        if (request.Main.Host != host.Host)
        {
            throw await guard.RefuseAsync(nameof(DigestMemory), input.MigrationId, input.Vm, $"the request's main host is {request.Main.Host}, not {host.Host}");
        }
        var vm = vms.Find(input.Vm) is { } found && found.MigrationId == input.MigrationId ? found
            : throw new ApplicationFailureException($"VM {input.Vm} does not run on {host.Host} by migration {input.MigrationId}", nonRetryable: true);
        await guard.AllowDigestAsync(input, vm.Manifest.PfnLimit);
        using var digest = new PageDigests(input, vm.Manifest.PfnLimit,
            vm.DigestKey?.ToArray() ?? throw new ApplicationFailureException($"VM {input.Vm} has no digest key here", nonRetryable: true));
        var before = vm.Pager.FetchedPages;
        var pages = new byte[ReadBatch * PageRecord.PageSize];
        var pfns = new List<ulong>(ReadBatch);
        for (var pfn = (ulong)input.FirstPfn; ; pfn++)
        {
            var end = pfn >= (ulong)input.EndPfn;
            if (!end && vm.Manifest.IsGuestPage(pfn))
            {
                pfns.Add(pfn);
            }
            if (pfns.Count == ReadBatch || (end && pfns.Count > 0))
            {
                try
                {
                    await vm.Pager.ReadAsync([.. pfns], pages.AsMemory(0, pfns.Count * PageRecord.PageSize), StepToken.Current);
                }
                catch (PageIntegrityException e)
                {
                    throw new ApplicationFailureException(e.Message, nonRetryable: true); // recorded as a security event by the pager
                }
                for (var i = 0; i < pfns.Count; i++)
                {
                    digest.Add(pfns[i], pages.AsSpan(i * PageRecord.PageSize, PageRecord.PageSize));
                }
                pfns.Clear();
            }
            if (end)
            {
                break;
            }
        }
        return digest.Result(vm.Pager.FetchedPages - before);
    }

    /// <summary>Stops a VM migrated here: its QEMU ends, its RAM file goes, and every host of its placement
    /// releases its pages (a host that is gone is named in the failure; what was released stays released).</summary>
    [Activity("StopVm")]
    public async Task<VmStopped> StopVmAsync(StopVm input)
    {
        if (input.Main == host.Host)
        {
            await guard.AllowStopAsync(input);
        }
        return await StopLeftVmAsync(input);
    }

    /// <summary>Stops a VM of this host's without the operator's word: a running guest that migrated on from
    /// here (its source steps checked that: the next main host's receipt).</summary>
    public Task<VmStopped> StopLeftVmAsync(StopVm input)
    {
        if (input.Main != host.Host)
        {
            throw new ApplicationFailureException($"a stop for main host {input.Main} reached host {host.Host}", nonRetryable: true);
        }
        if (vms.Find(input.Vm)?.MigrationId != input.MigrationId && !stopping.ContainsKey(input.MigrationId))
        {
            throw new ApplicationFailureException($"VM {input.Vm} of migration {input.MigrationId} does not run on {host.Host}", nonRetryable: true);
        }
        // A retry (its answer was slow or lost) waits for the stop under way and gets its result.
        return stopping.GetOrAdd(input.MigrationId, _ => new Lazy<Task<VmStopped>>(() => StopAsync(input))).Value;
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<Guid, Lazy<Task<VmStopped>>> stopping = new();

    private async Task<VmStopped> StopAsync(StopVm input)
    {
        var vm = vms.Remove(input.Vm) ?? throw new ApplicationFailureException($"VM {input.Vm} does not run on {host.Host}", nonRetryable: true);
        if (vm.Guest is not null)
        {
            await vm.Guest.QuitAsync();
        }
        if (vm.Ram is not null)
        {
            await vm.Ram.DisposeAsync();
        }
        if (vm.Memory is not null)
        {
            await vm.Memory.DisposeAsync();
        }
        var released = new List<PagingReleased>();
        foreach (var h in vm.Placement.Assignments.Select(a => a.Host).Append(host.Host).Distinct(StringComparer.Ordinal))
        {
            // Its own memory server too, by the capability it issued: the VM may come here again, under another.
            var capability = h == host.Host ? ownCapabilities.For(vm.MigrationId, input.Vm) : vm.Capabilities?.GetValueOrDefault(h);
            released.Add(new PagingReleased(h, await ReleaseAtAsync(h, input.Vm, capability)));
        }
        await AuditAsync(new MigratedVmStopped(vm.MigrationId, input.Vm, host.Host, [.. released.Select(r => r.Host)], released.Sum(r => r.Pages), DateTimeOffset.UtcNow));
        logger.LogInformation("VM {Vm} stopped; {Pages} pages released at {Hosts}", input.Vm, released.Sum(r => r.Pages), string.Join(", ", released.Select(r => r.Host)));
        return new VmStopped(vm.MigrationId, released);
    }

    private async Task<long> ReleaseAtAsync(string at, Guid vm, byte[]? capability)
    {
        try
        {
            return await client.ReleaseAsync(at, vm, capability, StepToken.Current);
        }
        catch (MemoryServer.PageProtocolException e) when (e.Code == Contracts.Paging.PageError.UnknownVm)
        {
            return 0; // released before, or the host restarted without it
        }
    }

    /// <summary>A host that does not serve a running VM's pages: a clear log line each time, an
    /// availability event at most every 10 s per host.</summary>
    private async Task UnavailableAsync(Guid migrationId, Guid vm, MemoryServer.PageProtocolException e, ulong pfn, int pages,
        System.Collections.Concurrent.ConcurrentDictionary<string, DateTime> last)
    {
        logger.LogError("VM {Vm}: {Pages} pages from 0x{Pfn:x} could not be paged in from {Host}: {Problem}; the guest's read fails (QEMU stops the guest)",
            vm, pages, pfn, e.Host, e.Message);
        var now = DateTime.UtcNow;
        if (last.TryGetValue(e.Host, out var at) && now - at < TimeSpan.FromSeconds(10))
        {
            return;
        }
        last[e.Host] = now;
        await AuditAsync(new PagesUnavailable(migrationId, vm, host.Host, e.Host, (long)pfn, pages, e.Message, DateTimeOffset.UtcNow));
    }

    private async Task ReportAsync(Guid migrationId, PageIntegrityException e)
    {
        logger.LogCritical("security event: VM {Vm} page 0x{Pfn:x} from {Host}: {Problem}", e.Vm, e.Pfn, e.Host, e.Reason);
        await AuditAsync(new PageCheckFailed(migrationId, e.Vm, host.Host, e.Host, (long)e.Pfn, e.Reason, DateTimeOffset.UtcNow));
    }

    /// <summary>To the migration's audit queue (see AuditRoute).</summary>
    private async Task AuditAsync(IMigrationEvent e) => await (await publish.GetSendEndpoint(audit.AddressOf(e.MigrationId))).Send((object)e);

    /// <summary>Page-outs seal under epochs of the main host's own, counted up and written down before use
    /// (so a restarted worker taking the VM over again never repeats a nonce): the source's epochs count
    /// up from 1, so the high bit keeps them apart (allenc memory servers use epochs with the top bit,
    /// for their replies, under the channel key: see PageServer).</summary>
    private const uint PageOutEpochs = 0x4000_0000;
}
