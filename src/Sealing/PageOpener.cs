using System.Collections.Concurrent;
using System.Security.Cryptography;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing;

/// <summary>Opens sealed pages of one VM under any epoch of its data key (subkeys derived on demand).
/// Only the main host (and, in the allenc baseline, a sub-host with its own keys) has one.</summary>
public sealed class PageOpener(DataKey key, Guid vm) : IDisposable
{
    private readonly ConcurrentDictionary<uint, ThreadLocal<AesGcm>> byEpoch = new();

    public Guid Vm => vm;

    /// <summary>False when the tag does not verify: altered bytes, another page's, another version's.</summary>
    public bool TryOpen(PageRecord record, Span<byte> page)
    {
        if (record.Class != PageClass.Sealed || record.Body.Length != PageRecord.SealedBodySize || page.Length != PageRecord.PageSize)
        {
            return false;
        }
        var body = record.Body.Span;
        Span<byte> ad = stackalloc byte[AssociatedData.Size];
        AssociatedData.Write(ad, vm, record.Pfn, record.Version, record.KeyEpoch);
        var aes = byEpoch.GetOrAdd(record.KeyEpoch, e => new ThreadLocal<AesGcm>(
            () => new AesGcm(key.Subkey(vm, e), PageRecord.TagSize), trackAllValues: true)).Value!;
        try
        {
            aes.Decrypt(body[..PageRecord.NonceSize], body.Slice(PageRecord.NonceSize, PageRecord.PageSize), body[^PageRecord.TagSize..], page, ad);
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
    }
}
