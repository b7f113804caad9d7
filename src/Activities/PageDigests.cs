using System.Buffers.Binary;
using System.Security.Cryptography;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Activities;

/// <summary>The digests of <see cref="DigestMemory"/>, the same at the source and at the main host: each
/// page's SHA-256, an HMAC of those per chunk and one over all of them, under the VM's digest key (so a
/// chunk of one page tells whoever reads the digests nothing of the page).</summary>
internal sealed class PageDigests : IDisposable
{
    private readonly DigestMemory range;
    private readonly IncrementalHash all;
    private readonly IncrementalHash[] chunks;
    private long pages;

    /// <summary>What is wrong with a range outside the VM's <paramref name="pfnLimit"/> pages or of more than
    /// 65536 chunks (a request could name 2^47 pages): checked before anything is read.</summary>
    public static string? Problem(DigestMemory range, ulong pfnLimit) =>
        range.ChunkPages <= 0 || range.FirstPfn < 0 || range.EndPfn < range.FirstPfn || (ulong)range.EndPfn > pfnLimit
            || (range.EndPfn - range.FirstPfn) / range.ChunkPages > 1 << 16
            ? $"a digest of pages [{range.FirstPfn}, {range.EndPfn}) in chunks of {range.ChunkPages}: the VM's pages are [0, {pfnLimit}), in at most 65536 chunks"
            : range.Nonce is { Length: not NonceSize } ? $"a digest's nonce is {NonceSize} bytes, not {range.Nonce.Length}"
            : null;

    public const int NonceSize = 16;

    /// <summary>The digests of <paramref name="range"/> (see <see cref="Problem"/>), under <paramref name="key"/>,
    /// which is wiped here (the hashes keep their own copies).</summary>
    public PageDigests(DigestMemory range, ulong pfnLimit, byte[] key)
    {
        if (Problem(range, pfnLimit) is { } problem)
        {
            CryptographicOperations.ZeroMemory(key);
            throw new ArgumentException(problem, nameof(range));
        }
        this.range = range;
        // The check's nonce keys its MACs (it is never MAC input a caller could shape into page records).
        var checkKey = range.Nonce is { } nonce ? HMACSHA256.HashData(key, nonce) : key.ToArray();
        CryptographicOperations.ZeroMemory(key);
        all = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, checkKey);
        chunks = [.. Enumerable.Range(0, (int)((range.EndPfn - range.FirstPfn + range.ChunkPages - 1) / range.ChunkPages))
            .Select(_ => IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, checkKey))];
        CryptographicOperations.ZeroMemory(checkKey);
    }

    public void Add(ulong pfn, ReadOnlySpan<byte> page)
    {
        Span<byte> digest = stackalloc byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(digest, pfn); // a page's MAC says which page it is
        SHA256.HashData(page, digest[8..]);
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
