using System.Security.Cryptography;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Activities;

/// <summary>The digests of <see cref="DigestMemory"/>, the same at the source and at the main host: each
/// page's SHA-256, a digest of those per chunk, and one over all of them.</summary>
internal sealed class PageDigests : IDisposable
{
    private readonly DigestMemory range;
    private readonly IncrementalHash all = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    private readonly IncrementalHash[] chunks;
    private long pages;

    public PageDigests(DigestMemory range)
    {
        if (range.ChunkPages <= 0 || range.EndPfn < range.FirstPfn || (range.EndPfn - range.FirstPfn) / range.ChunkPages > 1 << 16)
        {
            throw new ArgumentException($"digest of pages [{range.FirstPfn}, {range.EndPfn}) in chunks of {range.ChunkPages}: at most 65536 chunks");
        }
        this.range = range;
        chunks = [.. Enumerable.Range(0, (int)((range.EndPfn - range.FirstPfn + range.ChunkPages - 1) / range.ChunkPages))
            .Select(_ => IncrementalHash.CreateHash(HashAlgorithmName.SHA256))];
    }

    public void Add(ulong pfn, ReadOnlySpan<byte> page)
    {
        Span<byte> digest = stackalloc byte[32];
        SHA256.HashData(page, digest);
        all.AppendData(digest);
        chunks[((long)pfn - range.FirstPfn) / range.ChunkPages].AppendData(digest);
        pages++;
    }

    public MemoryDigest Result(long fetchedPages) =>
        new(pages, fetchedPages, [.. chunks.Select(c => Convert.ToHexStringLower(c.GetHashAndReset().AsSpan(0, 16)))], Convert.ToHexStringLower(all.GetHashAndReset()));

    public void Dispose()
    {
        all.Dispose();
        foreach (var chunk in chunks)
        {
            chunk.Dispose();
        }
    }
}
