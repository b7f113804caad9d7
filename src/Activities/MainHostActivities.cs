using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.Guest.Memory;
using SEmigrate.Guest.Qemu;
using SEmigrate.Introspection.Classification;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.MainHost;
using SEmigrate.Sealing;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>The main host's steps: take over the VM at switch-over (unwrap the data key, build the page
/// table, load the pages placed here into the VM's memory), and check the rebuilt memory against the
/// source's.</summary>
public sealed class MainHostActivities(HostContext host, PageClient client, HostKeyPair keys, MainHostVms vms, ILogger<MainHostActivities> logger)
{
    private const int FetchBatch = 256;

    [Activity("SwitchOver")]
    public async Task<SwitchedOverResult> SwitchOverAsync(SwitchOver input)
    {
        if (input.Main != host.Host)
        {
            throw new ApplicationFailureException($"switch-over for main host {input.Main} reached host {host.Host}", nonRetryable: true);
        }
        if (vms.Find(input.Vm) is { } running && running.MigrationId == input.MigrationId)
        {
            return running.SwitchedOver; // a retry after the answer was lost: the VM already runs here
        }
        DataKey key;
        try
        {
            key = KeyWrap.Unwrap(input.WrappedKey, keys, SourceActivities.KeyContext(input.MigrationId, host.Host));
        }
        catch (CryptographicException e)
        {
            throw new ApplicationFailureException($"the wrapped data key does not open with this host's key: {e.Message}", nonRetryable: true);
        }
        var map = ClassificationMap.Load(input.MapPath);
        var opener = new PageOpener(key, input.Vm);
        var codec = new PageCodec(input.Mode, input.Vm, key.CreateSealer(input.Vm, PageOutEpoch), opener);
        var table = new PageTable(map.PfnLimit);
        for (ulong pfn = 0; pfn < map.PfnLimit; pfn++)
        {
            if (map.IsGuestPage(pfn))
            {
                table.Set(pfn, codec.WireClass(map[pfn]), 1);
            }
        }

        // The pages placed here came in through this host's memory server; they move into the VM's memory.
        var image = Path.Combine(host.MigrationDirectory(input.MigrationId), "memory.img");
        using (var memory = GuestMemory.CreateImage(image, (long)map.PfnLimit * PageRecord.PageSize))
        {
            var local = input.Placement.Assignments.Where(a => a.Host == host.Host).ToList();
            var pfns = local.SelectMany(a => Enumerable.Range(0, (int)(a.EndPfn - a.FirstPfn)).Select(i => (ulong)(a.FirstPfn + i)))
                .Where(map.IsGuestPage).ToList();
            var page = new byte[PageRecord.PageSize];
            foreach (var part in pfns.Chunk(FetchBatch))
            {
                var records = await client.FetchAsync(host.Host, input.Vm, part, StepToken.Current);
                for (var i = 0; i < part.Length; i++)
                {
                    codec.Open(part[i], records[i], table, host.Host, page);
                    if (records[i].Class != PageClass.Zero)
                    {
                        memory.WritePage(part[i], page); // zero pages stay holes in the sparse image
                    }
                }
            }
            memory.Flush();
            await client.ReleaseAsync(host.Host, input.Vm, StepToken.Current);
            var remote = (long)map.GuestPages - pfns.Count;
            var pager = new RemotePager(client, codec, table, pfn => MainHostVms.RunningVm.HostOf(input.Placement, pfn),
                e =>
                {
                    logger.LogCritical("security event: VM {Vm} page 0x{Pfn:x} from {Host}: {Problem}", e.Vm, e.Pfn, e.Host, e.Message);
                    return ValueTask.CompletedTask;
                });
            var result = new SwitchedOverResult(host.Host, pfns.Count, remote, image);
            vms.Add(new MainHostVms.RunningVm(input.Vm, input.MigrationId, result, codec, table, pager, input.Placement, host.Host));
            logger.LogInformation("VM {Vm} switched over to {Host}: {Local} pages here, {Remote} at sub-hosts", input.Vm, host.Host, pfns.Count, remote);
            return result;
        }
    }

    [Activity("VerifyMemory")]
    public async Task<MemoryVerified> VerifyAsync(VerifyMemory input)
    {
        var vm = vms.Get(input.Vm);
        var map = ClassificationMap.Load(input.MapPath);
        using var source = GuestMemory.Open(BootedGuest.DumpIn(input.GuestDir));
        using var here = GuestMemory.OpenImage(vm.SwitchedOver.ImagePath);
        var zeros = new byte[PageRecord.PageSize];
        var mismatches = new List<long>();
        long pages = 0, fetched = 0, wrong = 0;
        using var all = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        void Compare(ulong pfn, ReadOnlySpan<byte> actual)
        {
            // A page that travelled as a zero marker must arrive as zeros, whatever stale bytes the
            // source still holds there; the baselines send every page's bytes.
            var expected = vm.Table[pfn].Class == PageClass.Zero || !source.IsPresent(pfn) ? zeros : source.Page(pfn);
            Span<byte> a = stackalloc byte[32];
            Span<byte> e = stackalloc byte[32];
            SHA256.HashData(actual, a);
            SHA256.HashData(expected, e);
            all.AppendData(a);
            pages++;
            if (!a.SequenceEqual(e))
            {
                wrong++;
                if (mismatches.Count < 10)
                {
                    mismatches.Add((long)pfn);
                }
            }
        }

        var remote = new List<ulong>();
        var page = new byte[PageRecord.PageSize];
        async Task FlushRemoteAsync()
        {
            foreach (var group in remote.GroupBy(vm.HostOf))
            {
                var pfns = group.ToArray();
                var records = await client.FetchAsync(group.Key, input.Vm, pfns, StepToken.Current);
                for (var i = 0; i < pfns.Length; i++)
                {
                    vm.Codec.Open(pfns[i], records[i], vm.Table, group.Key, page);
                    Compare(pfns[i], page);
                }
                fetched += pfns.Length;
            }
            remote.Clear();
        }

        for (ulong pfn = 0; pfn < map.PfnLimit; pfn++)
        {
            if (!map.IsGuestPage(pfn))
            {
                continue;
            }
            if (vm.HostOf(pfn) == vm.Main)
            {
                Compare(pfn, here.Page(pfn));
                continue;
            }
            remote.Add(pfn);
            if (remote.Count == FetchBatch)
            {
                await FlushRemoteAsync();
            }
        }
        await FlushRemoteAsync();
        return new MemoryVerified(pages, wrong, mismatches, fetched, Convert.ToHexStringLower(all.GetHashAndReset()));
    }

    /// <summary>Page-outs seal under an epoch of the main host's own: the source's epochs count up from
    /// 1, so the top bit keeps them apart (allenc memory servers use random epochs with that bit too,
    /// for their replies, under the channel key: see PageServer).</summary>
    private const uint PageOutEpoch = 0x4000_0000;
}
