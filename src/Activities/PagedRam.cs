using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using SEmigrate.Contracts.Paging;
using SEmigrate.Guest.Fuse;
using SEmigrate.MemoryServer.MainHost;

namespace SEmigrate.Activities;

/// <summary>A running guest's RAM at the main host, as the FUSE file its QEMU maps. A page the guest
/// wrote is kept here as its latest copy until it is paged out; any other is read through the VM's
/// pager (zeros for a free page, this host's share from its store, the rest paged in from the
/// sub-hosts, every page checked), one pager call per FUSE read, so a fault costs one request per
/// sub-host. A fault reads its page and the chunk around it (<see cref="ReadaheadBytes"/>: QEMU starts
/// without its huge-page advice, or every fault would read 2 MiB). The guest's resident memory (the
/// pages the kernel read and still holds) is kept within a budget: past it, chunks are evicted (the
/// kernel writes their dirty pages back here, then drops them; see <see cref="Eviction"/> for which),
/// and the pages written back are sealed under a new version and paged out to the host that holds their
/// range; pages never written cost nothing to evict.</summary>
public sealed class PagedRam(VmPager pager, ulong pfnLimit, long size, long budgetPages, Action<string> log, Eviction eviction = Eviction.TwoQueue)
    : IRamFile, IAsyncDisposable
{
    private const int Page = PageRecord.PageSize;

    private const int ChunkPages = ResidentChunks.ChunkPages;

    /// <summary>What a page fault reads: the page and the chunk around it.</summary>
    public const uint ReadaheadBytes = ChunkPages * Page;

    private readonly ResidentChunks resident = new(budgetPages, eviction);

    private readonly ConcurrentDictionary<ulong, byte[]> written = new();
    private readonly SemaphoreSlim pressure = new(0);
    private readonly CancellationTokenSource stop = new();
    private Task evictor = Task.CompletedTask;
    private TaskCompletionSource roomFreed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public long Size => size;

    /// <summary>Pages of the guest's RAM the kernel holds now (read here and not evicted since).</summary>
    public long ResidentPages => resident.ResidentPages;

    /// <summary>The most resident pages seen.</summary>
    public long PeakResidentPages => resident.PeakResidentPages;

    /// <summary>The most pages the guest may keep resident here: the main host's share.</summary>
    public long BudgetPages => budgetPages;

    /// <summary>Starts keeping the guest within its budget, evicting through <paramref name="fuse"/>.</summary>
    public void StartEviction(FuseRamFile fuse) => evictor = Task.Run(() => EvictAsync(fuse, stop.Token));

    public async ValueTask ReadAsync(long offset, Memory<byte> data)
    {
        if (data.Length == 0)
        {
            return; // a read at the end of the file
        }
        var (first, end) = ((ulong)(offset / Page), (ulong)((offset + data.Length + Page - 1) / Page));
        // Past the budget the evictor makes room; past it by a tenth, a read that brings new pages
        // waits for that room (the guest slows down rather than overrun the host's share).
        var hardLimit = Math.Max(budgetPages + budgetPages / 10, 4L * ChunkPages);
        var reserved = false;
        for (var tries = 0; !(reserved = resident.TryReserve(first, end, hardLimit, force: false)) && tries < 300; tries++)
        {
            pressure.Release();
            try
            {
                await Volatile.Read(ref roomFreed).Task.WaitAsync(TimeSpan.FromMilliseconds(100));
            }
            catch (TimeoutException)
            {
            }
        }
        if (!reserved)
        {
            log($"no room for a read at 0x{offset:x} within 30 s ({ResidentPages} pages resident, limit {hardLimit}): read anyway");
            resident.TryReserve(first, end, hardLimit, force: true); // over the limit rather than a failed read
        }
        if (ResidentPages > budgetPages)
        {
            pressure.Release();
        }
        // The page path: FUSE reads are whole pages, so they fill the kernel's buffer directly, and
        // when no page of the range was written here (the usual case) the pager reads straight into it.
        var count = (int)(end - first);
        var aligned = offset % Page == 0 && data.Length == count * Page;
        var staging = aligned ? null : ArrayPool<byte>.Shared.Rent(count * Page);
        var pages = aligned ? data : staging.AsMemory(0, count * Page);
        try
        {
            var wanted = new List<ulong>(count);
            for (var pfn = first; pfn < end; pfn++)
            {
                var at = pages.Span.Slice((int)(pfn - first) * Page, Page);
                if (written.TryGetValue(pfn, out var latest))
                {
                    latest.CopyTo(at);
                }
                else if (pfn < pfnLimit)
                {
                    wanted.Add(pfn);
                }
                else
                {
                    at.Clear();
                }
            }
            if (wanted.Count == count)
            {
                await pager.ReadAsync([.. wanted], pages);
            }
            else if (wanted.Count > 0)
            {
                var read = ArrayPool<byte>.Shared.Rent(wanted.Count * Page);
                try
                {
                    await pager.ReadAsync([.. wanted], read.AsMemory(0, wanted.Count * Page));
                    for (var i = 0; i < wanted.Count; i++)
                    {
                        read.AsSpan(i * Page, Page).CopyTo(pages.Span[((int)(wanted[i] - first) * Page)..]);
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(read);
                }
            }
            if (!aligned)
            {
                pages.Span.Slice((int)(offset - (long)first * Page), data.Length).CopyTo(data.Span);
            }
        }
        finally
        {
            if (staging is not null)
            {
                ArrayPool<byte>.Shared.Return(staging);
            }
        }
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data)
    {
        for (var at = 0; at < data.Length;)
        {
            var pfn = (ulong)((offset + at) / Page);
            var within = (int)((offset + at) % Page);
            var length = Math.Min(Page - within, data.Length - at);
            var page = new byte[Page];
            if (within != 0 || length != Page)
            {
                await ReadAsync((long)pfn * Page, page); // a part of a page: the rest as it is now
            }
            data.Span.Slice(at, length).CopyTo(page.AsSpan(within));
            written[pfn] = page; // a new array each time: eviction drops only the copy it paged out
            at += length;
        }
    }

    private async Task EvictAsync(FuseRamFile fuse, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await pressure.WaitAsync(ct);
                // Down to nine tenths of the budget: eviction runs in bursts, not a chunk per read.
                while (resident.TakeVictims(budgetPages * 9 / 10) is { Count: > 0 } victims)
                {
                    await EvictAsync(fuse, victims, ct);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // a page-out that failed leaves the pages here (they stay the latest copies); try again later
            catch (Exception e)
#pragma warning restore CA1031
            {
                log($"eviction failed, pages kept here: {e.Message}");
                await Task.Delay(500, ct);
            }
        }
    }

    /// <summary>Drops chunks from the kernel (their dirty pages come back here first), then pages out
    /// every page of them that was written since it came in, one request per host.</summary>
    private async Task EvictAsync(FuseRamFile fuse, List<long> victims, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            await Task.Run(() =>
            {
                foreach (var chunk in victims)
                {
                    fuse.Invalidate(chunk * ChunkPages * Page, ChunkPages * Page);
                }
            }, ct);
            if (clock.Elapsed > TimeSpan.FromSeconds(1))
            {
                log($"evicting {victims.Count} chunks took {clock.Elapsed.TotalSeconds:0.0} s");
            }
            var dirty = new List<(ulong Pfn, byte[] Page)>();
            foreach (var chunk in victims)
            {
                for (var pfn = (ulong)chunk * ChunkPages; pfn < (ulong)(chunk + 1) * ChunkPages && pfn < pfnLimit; pfn++)
                {
                    if (written.TryGetValue(pfn, out var page))
                    {
                        dirty.Add((pfn, page));
                    }
                }
            }
            if (dirty.Count > 0)
            {
                await pager.PageOutAsync([.. dirty.Select(d => (d.Pfn, (ReadOnlyMemory<byte>)d.Page))], ct);
                foreach (var (pfn, page) in dirty)
                {
                    written.TryRemove(new KeyValuePair<ulong, byte[]>(pfn, page)); // unless written again meanwhile
                }
            }
        }
        finally
        {
            resident.Evicted(victims);
        }
        Interlocked.Exchange(ref roomFreed, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        await stop.CancelAsync();
        await evictor;
        stop.Dispose();
        pressure.Dispose();
    }
}

