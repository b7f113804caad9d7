using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workers.Embedded;

/// <summary>The demo's and the tests' check that the main host serves the memory the source sent, with
/// no host reading another's files and no page sent again: both digest the VM's memory in chunks
/// (<see cref="DigestMemory"/>), and only the first chunks that differ are digested again page by page,
/// to name the pages.</summary>
public static class MemoryCheck
{
    private const int MaxChunks = 4096;
    private const int ChunksNamed = 4;

    /// <summary>Pages compared (as the main host counts them), chunks that differ, the first pages that
    /// differ, pages the main host fetched from sub-hosts, and the main host's digest.</summary>
    public sealed record Result(long Pages, long SourcePages, int MismatchedChunks, IReadOnlyList<long> FirstMismatches, long FetchedPages, string Digest)
    {
        public bool Ok => MismatchedChunks == 0 && Pages == SourcePages;
    }

    /// <summary>Compares the migration <paramref name="migrationId"/>'s memory at its source and main host,
    /// under the request it was accepted with (the hosts digest only for the operator's signed request): the
    /// embedded engine's journal has it; a migration Temporal ran gives its own (<paramref name="signed"/>).</summary>
    public static async Task<Result> CompareAsync(EmbeddedSteps steps, Guid migrationId, PlacementPlan placement, CancellationToken ct, MigrationRequest? signed = null)
    {
        var request = (await steps.JournalAsync(migrationId)).Request ?? signed
            ?? throw new InvalidOperationException($"migration {migrationId} has no accepted request in its journal");
        var nonce = System.Security.Cryptography.RandomNumberGenerator.GetBytes(16); // this check's own: its digests match no other's
        var end = placement.Assignments.Max(a => a.EndPfn);
        var chunk = (int)Math.Max(1, (end + MaxChunks - 1) / MaxChunks);
        Task<MemoryDigest> On(string host, long first, long until, int pages) =>
            steps.DigestAsync(new DigestMemory(request.MigrationId, request.Vm, host, first, until, pages, request, nonce), ct);

        var (source, main) = (On(request.Source, 0, end, chunk), On(request.Main.Host, 0, end, chunk));
        var (s, m) = (await source, await main);
        var differing = Enumerable.Range(0, s.Chunks.Count).Where(i => s.Chunks[i] != m.Chunks[i]).ToList();
        var named = new List<long>();
        foreach (var i in differing.Take(ChunksNamed))
        {
            var (first, until) = ((long)i * chunk, Math.Min(end, (long)(i + 1) * chunk));
            var (sp, mp) = (await On(request.Source, first, until, 1), await On(request.Main.Host, first, until, 1));
            named.AddRange(Enumerable.Range(0, sp.Chunks.Count).Where(p => sp.Chunks[p] != mp.Chunks[p]).Select(p => first + p));
        }
        return new Result(m.Pages, s.Pages, differing.Count, named, m.FetchedPages, m.Digest);
    }
}
