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
/// sub-hosts, every page checked), one pager call per FUSE read, so a 2 MiB fault costs one request per
/// sub-host. The guest's resident memory (2 MiB blocks the kernel read and still holds) is kept within
/// a budget: past it, the oldest blocks are evicted (the kernel writes their dirty pages back here,
/// then drops them), and the pages written back are sealed under a new version and paged out to the
/// host that holds their range; pages never written cost nothing to evict.</summary>
public sealed class PagedRam(VmPager pager, ulong pfnLimit, long size, long budgetPages, Action<string> log) : IRamFile, IAsyncDisposable
{
    private const int Page = PageRecord.PageSize;
    private const int BlockPages = 512;
    private readonly ConcurrentDictionary<ulong, byte[]> written = new();
    private readonly ConcurrentDictionary<long, long> resident = new(); // block -> when it was read (ticks)
    private readonly ConcurrentDictionary<long, long> evictedAt = new(); // block -> when it was evicted (ticks)
    private readonly ConcurrentDictionary<long, bool> hot = new(); // blocks read again right after eviction
    private readonly ConcurrentDictionary<long, bool> evicting = new(); // blocks being dropped from the kernel now
    private readonly SemaphoreSlim pressure = new(0);
    private readonly CancellationTokenSource stop = new();
    private Task evictor = Task.CompletedTask;
    private TaskCompletionSource roomFreed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public long Size => size;

    /// <summary>The most pages the guest may keep resident here: the main host's share.</summary>
    public long BudgetPages => budgetPages;

    /// <summary>Blocks of the guest's RAM the kernel holds now, in pages.</summary>
    public long ResidentPages => resident.Count * (long)BlockPages;

    /// <summary>The most resident pages seen.</summary>
    public long PeakResidentPages => Interlocked.Read(ref peak);

    private long peak;

    /// <summary>Starts keeping the guest within its budget, evicting through <paramref name="fuse"/>.</summary>
    public void StartEviction(FuseRamFile fuse) => evictor = Task.Run(() => EvictAsync(fuse, stop.Token));

    public async ValueTask ReadAsync(long offset, Memory<byte> data)
    {
        var (first, end) = ((ulong)(offset / Page), (ulong)((offset + data.Length + Page - 1) / Page));
        var blocks = new List<long>(2);
        for (var block = (long)first / BlockPages; block <= ((long)end - 1) / BlockPages; block++)
        {
            blocks.Add(block);
        }
        // Past the budget the evictor makes room; past it by a tenth, a read that brings new blocks
        // waits for that room (the guest slows down rather than overrun the host's share).
        var hardLimit = Math.Max(budgetPages + budgetPages / 10, 4L * BlockPages);
        var reserved = false;
        for (var tries = 0; !(reserved = TryReserve(blocks, hardLimit)) && tries < 300; tries++)
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
            foreach (var block in blocks)
            {
                resident.TryAdd(block, Stopwatch.GetTimestamp()); // over the limit rather than a failed read
            }
        }
        var now = ResidentPages;
        if (now > Interlocked.Read(ref peak))
        {
            Interlocked.Exchange(ref peak, now);
        }
        if (now > budgetPages)
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

    /// <summary>A block read again this soon after its eviction counts as hot.</summary>
    private static readonly TimeSpan HotWithin = TimeSpan.FromMilliseconds(500);

    /// <summary>The oldest block that is not hot, else the oldest hot one (a sweep over more memory than
    /// the budget misses either way; the blocks the guest keeps coming back to should stay).</summary>
    private long? Victim() =>
        resident.OrderBy(b => hot.ContainsKey(b.Key) ? 1 : 0).ThenBy(b => b.Value).Select(b => (long?)b.Key).FirstOrDefault();

    /// <summary>Marks the blocks resident if they fit under the limit, all at once (reads come concurrently).</summary>
    private bool TryReserve(List<long> blocks, long limit)
    {
        lock (resident)
        {
            // A block being evicted is not waited for: its reads are the kernel's I/O in flight, which
            // the eviction itself waits on (the kernel drops the block once they are answered).
            if (ResidentPages + blocks.Count(b => !resident.ContainsKey(b) && !evicting.ContainsKey(b)) * (long)BlockPages > limit)
            {
                return false;
            }
            foreach (var block in blocks.Where(b => !evicting.ContainsKey(b))) // an evicted block is gone once its reads are answered
            {
                if (resident.TryAdd(block, Stopwatch.GetTimestamp()) && evictedAt.TryRemove(block, out var gone)
                    && Stopwatch.GetElapsedTime(gone) < HotWithin)
                {
                    hot[block] = true; // wanted again at once (kernel text, page tables): evicted last
                }
            }
            return true;
        }
    }

    private async Task EvictAsync(FuseRamFile fuse, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await pressure.WaitAsync(ct);
                // Down to nine tenths of the budget: eviction runs in bursts, not a block per read.
                while (ResidentPages > budgetPages * 9 / 10 && Victim() is { } block)
                {
                    await EvictAsync(fuse, block, ct);
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

    /// <summary>Drops one block from the kernel (its dirty pages come back here first), then pages out
    /// every page of it that was written since it came in.</summary>
    private async Task EvictAsync(FuseRamFile fuse, long block, CancellationToken ct)
    {
        var (first, end) = ((ulong)(block * BlockPages), (ulong)((block + 1) * BlockPages));
        evicting[block] = true;
        resident.TryRemove(block, out _);
        hot.TryRemove(block, out _);
        evictedAt[block] = Stopwatch.GetTimestamp();
        var clock = Stopwatch.StartNew();
        try
        {
            await Task.Run(() => fuse.Invalidate((long)first * Page, (long)BlockPages * Page), ct);
        }
        finally
        {
            evicting.TryRemove(block, out _);
        }
        if (clock.Elapsed > TimeSpan.FromSeconds(1))
        {
            log($"evicting block {block} took {clock.Elapsed.TotalSeconds:0.0} s");
        }
        var dirty = new List<(ulong Pfn, byte[] Page)>();
        for (var pfn = first; pfn < end; pfn++)
        {
            if (written.TryGetValue(pfn, out var page) && pfn < pfnLimit)
            {
                dirty.Add((pfn, page));
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
