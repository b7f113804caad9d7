using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics;
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

    /// <summary>The unit of residency and eviction, in pages (at most 64: a chunk's pages are a bit mask).</summary>
    private const int ChunkPages = 16;

    /// <summary>What a page fault reads: the page and the chunk around it.</summary>
    public const uint ReadaheadBytes = ChunkPages * Page;

    /// <summary>Chunks evicted together, their dirty pages paged out in one request per host: 4 MiB.</summary>
    private const int EvictBatch = 64;

    /// <summary>Fifo: a chunk read again this soon after its eviction counts as hot (kernel text, page
    /// tables, stacks): hot chunks are evicted only when no other is left.</summary>
    private static readonly TimeSpan HotWithin = TimeSpan.FromMilliseconds(500);

    /// <summary>TwoQueue: the part of the budget new chunks (cold) may hold before the evictor takes
    /// from them alone; past it hot ones go too, oldest first.</summary>
    private long ColdTarget => Math.Max(4L * ChunkPages, budgetPages / 4);

    /// <summary>TwoQueue: how many chunks evicted cold are remembered (half the budget's): a chunk read
    /// again while remembered comes back hot.</summary>
    private int GhostLimit => (int)Math.Max(16, budgetPages / ChunkPages / 2);

    private readonly Queue<(long Chunk, long Stamp)> ghosts = new();
    private readonly Dictionary<long, long> ghosted = []; // chunk -> the stamp of its entry in ghosts
    private long hotPages; // of residentPages: those of hot chunks not being evicted

    private readonly ConcurrentDictionary<ulong, byte[]> written = new();
    private readonly Lock gate = new();
    private readonly Dictionary<long, Chunk> chunks = []; // resident, or being evicted
    private readonly Queue<(long Chunk, long Stamp)> cold = new();
    private readonly Queue<(long Chunk, long Stamp)> hot = new();
    private readonly Dictionary<long, long> evictedAt = []; // chunk -> when it was evicted (ticks)
    private readonly SemaphoreSlim pressure = new(0);
    private readonly CancellationTokenSource stop = new();
    private Task evictor = Task.CompletedTask;
    private TaskCompletionSource roomFreed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long residentPages;
    private long evictingPages; // of residentPages: those of chunks being evicted (the kernel holds them until it is done)
    private long peak;
    private long stamps;

    /// <summary>A chunk's pages the kernel holds (a bit each), and those read while it was being evicted.</summary>
    private sealed class Chunk
    {
        public ulong Pages;
        public ulong ReadWhileEvicting;
        public bool Evicting;
        public bool Hot;
        public long Stamp;
    }

    public long Size => size;

    /// <summary>The most pages the guest may keep resident here: the main host's share.</summary>
    public long BudgetPages => budgetPages;

    /// <summary>Pages of the guest's RAM the kernel holds now (read here and not evicted since).</summary>
    public long ResidentPages => Interlocked.Read(ref residentPages);

    /// <summary>The most resident pages seen.</summary>
    public long PeakResidentPages => Interlocked.Read(ref peak);

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
        for (var tries = 0; !(reserved = TryReserve(first, end, hardLimit, force: false)) && tries < 300; tries++)
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
            TryReserve(first, end, hardLimit, force: true); // over the limit rather than a failed read
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

    /// <summary>The pages of [first, end) that fall in each chunk, as that chunk's bit mask.</summary>
    private static IEnumerable<(long Chunk, ulong Mask)> Masks(ulong first, ulong end)
    {
        for (var chunk = (long)(first / ChunkPages); chunk <= (long)((end - 1) / ChunkPages); chunk++)
        {
            var (from, to) = (Math.Max(first, (ulong)chunk * ChunkPages), Math.Min(end, (ulong)(chunk + 1) * ChunkPages));
            var bits = (int)(to - from);
            yield return (chunk, (bits == 64 ? ulong.MaxValue : (1UL << bits) - 1) << (int)(from - (ulong)chunk * ChunkPages));
        }
    }

    /// <summary>Counts the pages of a read as resident if they fit under the limit (or <paramref name="force"/>),
    /// all at once (reads come concurrently). Pages of a chunk being evicted never wait: their reads are
    /// the kernel's I/O in flight, which the eviction itself waits on. Its pages still count until the
    /// eviction is done, and those read meanwhile count from then on, so other reads wait for room
    /// rather than overrun the limit.</summary>
    private bool TryReserve(ulong first, ulong end, long limit, bool force)
    {
        lock (gate)
        {
            long adding = 0, back = 0;
            foreach (var (chunk, mask) in Masks(first, end))
            {
                if (!chunks.TryGetValue(chunk, out var c))
                {
                    adding += BitOperations.PopCount(mask);
                }
                else if (c.Evicting)
                {
                    back += BitOperations.PopCount(mask & ~c.ReadWhileEvicting & ~c.Pages);
                }
                else
                {
                    adding += BitOperations.PopCount(mask & ~c.Pages);
                }
            }
            if (!force && adding > 0 && residentPages + back + adding > limit)
            {
                return false;
            }
            foreach (var (chunk, mask) in Masks(first, end))
            {
                if (!chunks.TryGetValue(chunk, out var c))
                {
                    var wantedAgain = eviction == Eviction.Fifo
                        ? evictedAt.Remove(chunk, out var gone) && Stopwatch.GetElapsedTime(gone) < HotWithin
                        : ghosted.Remove(chunk); // its ghost stays queued: skipped when it comes up
                    chunks[chunk] = c = new Chunk { Stamp = ++stamps, Hot = wantedAgain };
                    (wantedAgain ? hot : cold).Enqueue((chunk, c.Stamp));
                }
                if (c.Evicting)
                {
                    c.ReadWhileEvicting |= mask;
                }
                else
                {
                    hotPages += c.Hot ? BitOperations.PopCount(mask & ~c.Pages) : 0;
                    c.Pages |= mask;
                }
            }
            residentPages += adding + back;
            peak = Math.Max(peak, residentPages);
            return true;
        }
    }

    /// <summary>Up to <see cref="EvictBatch"/> chunks to evict until the pages not being evicted are down
    /// to <paramref name="downTo"/>; they count as resident until the eviction is done (<see cref="Evicted"/>).
    /// Which: see <see cref="Eviction"/>.</summary>
    private List<long> TakeVictims(long downTo)
    {
        var victims = new List<long>(EvictBatch);
        lock (gate)
        {
            while (victims.Count < EvictBatch && residentPages - evictingPages > downTo && NextVictim() is { } chunk)
            {
                victims.Add(chunk);
            }
        }
        return victims;

        long? NextVictim()
        {
            if (eviction == Eviction.Fifo)
            {
                return Next(cold) ?? Next(hot);
            }
            // Cold ones while they hold more than their part, then the oldest hot ones: a workload cycling
            // over more than the budget keeps the hot part resident instead of missing on every chunk.
            var coldPages = residentPages - evictingPages - hotPages;
            return coldPages > ColdTarget ? Next(cold) ?? Next(hot) : Next(hot) ?? Next(cold);
        }

        long? Next(Queue<(long Chunk, long Stamp)> queue)
        {
            while (queue.TryDequeue(out var entry))
            {
                if (chunks.TryGetValue(entry.Chunk, out var c) && c.Stamp == entry.Stamp && !c.Evicting)
                {
                    c.Evicting = true;
                    var pages = BitOperations.PopCount(c.Pages);
                    evictingPages += pages;
                    hotPages -= c.Hot ? pages : 0;
                    return entry.Chunk;
                }
            }
            return null;
        }
    }

    /// <summary>TwoQueue: remembers a chunk evicted cold, forgetting the oldest past the limit (an entry
    /// whose chunk came back, or was remembered again since, is skipped).</summary>
    private void Ghost(long chunk)
    {
        var stamp = ++stamps;
        ghosted[chunk] = stamp;
        ghosts.Enqueue((chunk, stamp));
        while (ghosted.Count > GhostLimit && ghosts.TryDequeue(out var oldest))
        {
            if (ghosted.TryGetValue(oldest.Chunk, out var live) && live == oldest.Stamp)
            {
                ghosted.Remove(oldest.Chunk);
            }
        }
        while (ghosts.TryPeek(out var head) && !(ghosted.TryGetValue(head.Chunk, out var live) && live == head.Stamp))
        {
            ghosts.Dequeue();
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
                while (TakeVictims(budgetPages * 9 / 10) is { Count: > 0 } victims)
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
            Evicted(victims);
        }
        Interlocked.Exchange(ref roomFreed, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    /// <summary>The chunks are gone from the kernel, but for pages read while they were being evicted:
    /// those stay resident (the kernel may or may not hold them: count them).</summary>
    private void Evicted(List<long> victims)
    {
        lock (gate)
        {
            var now = Stopwatch.GetTimestamp();
            foreach (var chunk in victims)
            {
                var c = chunks[chunk];
                c.Evicting = false;
                evictingPages -= BitOperations.PopCount(c.Pages);
                residentPages -= BitOperations.PopCount(c.Pages & ~c.ReadWhileEvicting);
                if (c.ReadWhileEvicting == 0)
                {
                    chunks.Remove(chunk);
                    if (eviction == Eviction.Fifo)
                    {
                        evictedAt[chunk] = now;
                    }
                    else if (!c.Hot)
                    {
                        Ghost(chunk);
                    }
                    continue;
                }
                // Read while it was being evicted: wanted now, hot.
                (c.Pages, c.ReadWhileEvicting, c.Stamp, c.Hot) = (c.ReadWhileEvicting, 0, ++stamps, true);
                hotPages += BitOperations.PopCount(c.Pages);
                hot.Enqueue((chunk, c.Stamp));
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await stop.CancelAsync();
        await evictor;
        stop.Dispose();
        pressure.Dispose();
    }
}

/// <summary>Which chunks a main host evicts when a guest's resident pages pass its budget. The pager sees
/// only misses (the kernel's page cache serves hits), so recency is known only from them.</summary>
public enum Eviction
{
    /// <summary>2Q (Johnson and Shasha, 1994): new chunks are cold; the evictor takes cold ones, oldest
    /// first, while they hold more than a quarter of the budget; a chunk evicted cold is remembered
    /// (half the budget's worth) and, read again while remembered, comes back hot; hot ones are evicted
    /// oldest first once cold ones are within their quarter. Scan-resistant: a pass over more than the
    /// budget leaves most of the hot part resident.</summary>
    TwoQueue,

    /// <summary>The earlier policy, kept to compare against: the oldest chunk first; a chunk read again
    /// within 500 ms of its eviction is hot and goes last. A workload cycling over more than the budget
    /// misses on every chunk.</summary>
    Fifo,
}
