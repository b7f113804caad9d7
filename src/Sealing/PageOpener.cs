using System.Collections.Concurrent;
using System.Security.Cryptography;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing;

/// <summary>Opens sealed pages (and checks plain pages' GMAC tags) of one VM under any epoch of its data key (subkeys derived on demand).
/// Only the main host (and, in the allenc baseline, a sub-host with its own keys) has one.</summary>
public sealed class PageOpener(DataKey key, Guid vm) : IDisposable
{
    private readonly ConcurrentDictionary<uint, ThreadLocal<AesGcm>> byEpoch = new();

    public Guid Vm => vm;

    private readonly ThreadLocal<byte[]> macInput = new(() => new byte[AssociatedData.Size + PageRecord.PageSize]);

    /// <summary>Opens a sealed page, or checks a plain page's GMAC and copies it, into
    /// <paramref name="page"/>. False when the tag does not verify: altered bytes, another page's,
    /// another version's, a plain page passed off as sealed or the other way round.</summary>
    public bool TryOpen(PageRecord record, Span<byte> page)
    {
        if (record.Class is not (PageClass.Sealed or PageClass.Plain) || record.Body.Length != PageRecord.SealedBodySize || page.Length != PageRecord.PageSize)
        {
            return false;
        }
        var body = record.Body.Span;
        var nonce = body[..PageRecord.NonceSize];
        var bytes = body.Slice(PageRecord.NonceSize, PageRecord.PageSize);
        var tag = body[^PageRecord.TagSize..];
        var aes = byEpoch.GetOrAdd(record.KeyEpoch, e => new ThreadLocal<AesGcm>(
            () => new AesGcm(key.Subkey(vm, e), PageRecord.TagSize), trackAllValues: true)).Value!;
        try
        {
            if (record.Class == PageClass.Plain)
            {
                var input = macInput.Value!;
                AssociatedData.Write(input, PageClass.Plain, vm, record.Pfn, record.Version, record.KeyEpoch);
                bytes.CopyTo(input.AsSpan(AssociatedData.Size));
                aes.Decrypt(nonce, ReadOnlySpan<byte>.Empty, tag, Span<byte>.Empty, input);
                bytes.CopyTo(page);
                return true;
            }
            Span<byte> ad = stackalloc byte[AssociatedData.Size];
            AssociatedData.Write(ad, PageClass.Sealed, vm, record.Pfn, record.Version, record.KeyEpoch);
            aes.Decrypt(nonce, bytes, tag, page, ad);
            return true;
        }
        catch (AuthenticationTagMismatchException)
        {
            page.Clear(); // never leave unauthenticated bytes behind
            return false;
        }
    }

    public void Dispose()
    {
        foreach (var local in byEpoch.Values)
        {
            foreach (var a in local.Values)
            {
                a.Dispose();
            }
            local.Dispose();
        }
        macInput.Dispose();
    }
}
