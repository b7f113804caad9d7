namespace SEmigrate.Activities.Tests;

/// <summary>The main host's eviction, on the book-keeping alone: a guest's reads of chunks the kernel does not
/// hold (misses; hits never reach the pager), eviction done at once. The workload is the bench's: passes over
/// a buffer, in order, for ever.</summary>
public sealed class ResidentChunksTests
{
    private const int Budget = 4096; // pages: 256 chunks

    [Theory]
    [InlineData(Eviction.TwoQueue, 0.0, 0.60)]
    [InlineData(Eviction.Fifo, 1.0, 1.0)]
    public void A_workload_cycling_over_more_than_its_share_misses_on_every_chunk_only_with_fifo(Eviction eviction, double least, double most)
    {
        var run = new Run(eviction);
        var chunks = Budget * 3 / 2 / ResidentChunks.ChunkPages;
        var misses = Enumerable.Range(0, 12).Select(_ => run.Pass(0, chunks)).ToList();
        var steady = misses.Skip(6).Average() / chunks;
        TestContext.Current.TestOutputHelper?.WriteLine($"{eviction}: misses per pass {string.Join(" ", misses)} of {chunks} chunks; steady {steady:P0}");
        Assert.InRange(steady, least, most);
        Assert.InRange(run.Chunks.PeakResidentPages, 0, Budget + Budget / 10); // within the share + 10%
    }

    [Theory]
    [InlineData(Eviction.TwoQueue)]
    [InlineData(Eviction.Fifo)]
    public void A_workload_within_its_share_misses_only_on_its_first_pass(Eviction eviction)
    {
        var run = new Run(eviction);
        var chunks = Budget * 8 / 10 / ResidentChunks.ChunkPages;
        var misses = Enumerable.Range(0, 5).Select(_ => run.Pass(0, chunks)).ToList();
        Assert.Equal([chunks, 0, 0, 0, 0], misses);
    }

    [Fact]
    public void With_2q_a_workload_that_moves_elsewhere_gets_its_new_chunks_kept_in_turn()
    {
        var run = new Run(Eviction.TwoQueue);
        var chunks = Budget * 3 / 2 / ResidentChunks.ChunkPages;
        for (var i = 0; i < 10; i++)
        {
            run.Pass(0, chunks);
        }
        var moved = Enumerable.Range(0, 20).Select(_ => run.Pass(10_000, chunks)).ToList();
        TestContext.Current.TestOutputHelper?.WriteLine($"after the move: misses per pass {string.Join(" ", moved)} of {chunks}");
        Assert.InRange(moved.Skip(14).Average() / chunks, 0.0, 0.60);
    }

    /// <summary>The kernel's view: the chunks it holds; a read of one it holds is a hit and never reaches the pager.</summary>
    private sealed class Run(Eviction eviction)
    {
        public ResidentChunks Chunks { get; } = new(Budget, eviction);

        private readonly HashSet<long> held = [];

        /// <summary>Reads chunks [first, first + count) in order; returns the misses.</summary>
        public int Pass(long first, int count)
        {
            var misses = 0;
            for (var chunk = first; chunk < first + count; chunk++)
            {
                if (held.Contains(chunk))
                {
                    continue;
                }
                misses++;
                var (from, to) = ((ulong)chunk * ResidentChunks.ChunkPages, (ulong)(chunk + 1) * ResidentChunks.ChunkPages);
                while (!Chunks.TryReserve(from, to, Budget + Budget / 10, force: false))
                {
                    Evict();
                }
                held.Add(chunk);
                if (Chunks.ResidentPages > Budget)
                {
                    Evict();
                }
            }
            return misses;
        }

        private void Evict()
        {
            var victims = Chunks.TakeVictims(Budget * 9 / 10);
            Assert.NotEmpty(victims);
            held.ExceptWith(victims);
            Chunks.Evicted(victims);
        }
    }
}
