using System.Diagnostics;
using System.Numerics;

namespace SEmigrate.Activities;

/// <summary>Which of a running guest's chunks the kernel holds at the main host (the pages it read through
/// the FUSE file and still holds), and which to evict when they pass the budget (see <see cref="Eviction"/>).
/// Only the book-keeping: <see cref="PagedRam"/> reads and evicts. Thread-safe.</summary>
public sealed class ResidentChunks(long budgetPages, Eviction eviction)
{
    /// <summary>The unit of residency and eviction, in pages (at most 64: a chunk's pages are a bit mask).</summary>
    public const int ChunkPages = 16;

    private readonly Lock gate = new();

    /// <summary>Fifo: a chunk read again this soon after its eviction counts as hot (kernel text, page
    /// tables, stacks): hot chunks are evicted only when no other is left.</summary>
    private static readonly TimeSpan HotWithin = TimeSpan.FromMilliseconds(500);

    /// <summary>TwoQueue: the part of the budget hot chunks hold at most (the evictor takes the oldest hot
    /// one past it); the rest is for new (cold) chunks, which go first.</summary>
    private long HotTarget => budgetPages * 3 / 4;

    /// <summary>TwoQueue: how many chunks evicted cold are remembered (twice the budget's, so that a pass
    /// over a buffer larger than the budget finds its chunks still remembered): a chunk read again while
    /// remembered comes back hot.</summary>
    private int GhostLimit => (int)Math.Clamp(2 * budgetPages / ChunkPages, 16, 1 << 20);

    /// <summary>TwoQueue: once hot chunks fill their part, one remembered chunk in this many comes back hot
    /// (taking the oldest hot one's place), so the hot part follows a workload that moves, slowly enough
    /// that a pass over more than the budget keeps most of it.</summary>
    private const int AdmitOneIn = 16;

    private long admissions;

    private readonly Queue<(long Chunk, long Stamp)> ghosts = new();
    private readonly Dictionary<long, long> ghosted = []; // chunk -> the stamp of its entry in ghosts
    private long hotPages; // of residentPages: those of hot chunks not being evicted

    private readonly Dictionary<long, Chunk> chunks = []; // resident, or being evicted
    private readonly Queue<(long Chunk, long Stamp)> cold = new();
    private readonly Queue<(long Chunk, long Stamp)> hot = new();
    private readonly Dictionary<long, long> evictedAt = []; // chunk -> when it was evicted (ticks)
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

    /// <summary>Pages of the guest's RAM the kernel holds now (read here and not evicted since).</summary>
    public long ResidentPages => Interlocked.Read(ref residentPages);

    /// <summary>The most resident pages seen.</summary>
    public long PeakResidentPages => Interlocked.Read(ref peak);

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
    public bool TryReserve(ulong first, ulong end, long limit, bool force)
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
                        : ghosted.Remove(chunk) && (hotPages < HotTarget || ++admissions % AdmitOneIn == 0); // its ghost stays queued: skipped when it comes up
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

    /// <summary>Chunks evicted together, their dirty pages paged out in one request per host: 4 MiB.</summary>
    public const int EvictBatch = 64;

    /// <summary>Up to <see cref="EvictBatch"/> chunks to evict until the pages not being evicted are down
    /// to <paramref name="downTo"/>; they count as resident until the eviction is done (<see cref="Evicted"/>).
    /// Which: see <see cref="Eviction"/>.</summary>
    public List<long> TakeVictims(long downTo)
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
            // The oldest hot one past the hot part, else cold ones first: a workload cycling over more than
            // the budget keeps the hot part resident instead of missing on every chunk.
            return hotPages > HotTarget ? Next(hot) ?? Next(cold) : Next(cold) ?? Next(hot);
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

    /// <summary>The chunks are gone from the kernel, but for pages read while they were being evicted:
    /// those stay resident (the kernel may or may not hold them: count them).</summary>
    public void Evicted(List<long> victims)
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

}

/// <summary>Which chunks a main host evicts when a guest's resident pages pass its budget. The pager sees
/// only misses (the kernel's page cache serves hits), so recency is known only from them.</summary>
public enum Eviction
{
    /// <summary>After 2Q (Johnson and Shasha, 1994): new chunks are cold and go first; a chunk evicted cold is
    /// remembered (twice the budget's worth) and, read again while remembered, comes back hot; hot chunks
    /// hold up to three quarters of the budget, and once they do, one remembered chunk in 16 comes back hot
    /// in the oldest hot one's place. Scan-resistant: a pass over a buffer half again as large as the budget
    /// misses on about half its chunks (every one with fifo), and the hot part follows a workload that moves
    /// within about a dozen passes (ResidentChunksTests).</summary>
    TwoQueue,

    /// <summary>The earlier policy, kept to compare against: the oldest chunk first; a chunk read again
    /// within 500 ms of its eviction is hot and goes last. A workload cycling over more than the budget
    /// misses on every chunk.</summary>
    Fifo,
}
