using System.Buffers.Binary;
using System.Security.Cryptography;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;

namespace SEmigrate.Sealing;

/// <summary>Seals pages with AES-256-GCM under one (data key, VM, epoch) subkey.
/// Nonces never repeat under one key, by construction: the subkey is unique to this epoch (HKDF of
/// the data key with the VM and epoch), an epoch has exactly one sealer (DataKey.CreateSealer refuses
/// a second one in-process; across processes the orchestrator hands every sealing party and every
/// retry its own epoch), and within the sealer the nonce is a 64-bit counter that only goes up
/// (atomically) and is never reset. Should an epoch repeat all the same (a state folder restored from
/// a backup, two workers on copies of one), the nonce's other 32 bits are random per sealer, so two
/// sealers of one epoch collide only if they also draw the same salt (2^-32) and their counters
/// overlap. The nonce travels in the body, so GCM binds it; the opener needs nothing new. Associated data binds VM, page number, version and epoch, so a
/// sealed page cannot be moved, replayed as another version or re-labelled without failing its tag.
/// Plain pages get a GMAC tag under the same key (<see cref="MacInto"/>).</summary>
public sealed class PageSealer : IDisposable
{
    private readonly byte[] subkey;
    private readonly ThreadLocal<AesGcm> aes;
    private readonly ThreadLocal<byte[]> macInput = new(() => new byte[AssociatedData.Size + PageRecord.PageSize]);
    private readonly uint salt = BinaryPrimitives.ReadUInt32LittleEndian(RandomNumberGenerator.GetBytes(4));
    private long counter;

    internal PageSealer(byte[] subkey, Guid vm, uint epoch)
    {
        this.subkey = subkey;
        Vm = vm;
        Epoch = epoch;
        aes = new ThreadLocal<AesGcm>(() => new AesGcm(this.subkey, PageRecord.TagSize), trackAllValues: true);
    }

    public Guid Vm { get; }

    public uint Epoch { get; }

    /// <summary>Seals <paramref name="page"/> into <paramref name="body"/> (nonce, ciphertext, tag).</summary>
    public PageRecord Seal(ulong pfn, ulong version, ReadOnlySpan<byte> page, Memory<byte> body)
    {
        SealInto(pfn, version, page, body.Span);
        return new PageRecord(PageClass.Sealed, pfn, version, Epoch, body);
    }

    /// <summary>Seals straight into a frame being built: no allocation, no copy.</summary>
    public void SealInto(ulong pfn, ulong version, ReadOnlySpan<byte> page, Span<byte> body)
    {
        if (page.Length != PageRecord.PageSize || body.Length != PageRecord.SealedBodySize)
        {
            throw new ArgumentException($"seal takes a {PageRecord.PageSize}-byte page into a {PageRecord.SealedBodySize}-byte body");
        }
        var nonce = NextNonce(body);
        Span<byte> ad = stackalloc byte[AssociatedData.Size];
        AssociatedData.Write(ad, PageClass.Sealed, Vm, pfn, version, Epoch);
        aes.Value!.Encrypt(nonce, page, body.Slice(PageRecord.NonceSize, PageRecord.PageSize), body[^PageRecord.TagSize..], ad);
    }

    /// <summary>A plain page's body: nonce, the page as it is, and a GMAC tag over it (AES-GCM with
    /// nothing to encrypt and the page in the associated data), under the same key and nonce counter as
    /// sealing, so nonces stay unique across both.</summary>
    public void MacInto(ulong pfn, ulong version, ReadOnlySpan<byte> page, Span<byte> body)
    {
        if (page.Length != PageRecord.PageSize || body.Length != PageRecord.SealedBodySize)
        {
            throw new ArgumentException($"a MAC takes a {PageRecord.PageSize}-byte page into a {PageRecord.SealedBodySize}-byte body");
        }
        var nonce = NextNonce(body);
        var input = macInput.Value!;
        AssociatedData.Write(input, PageClass.Plain, Vm, pfn, version, Epoch);
        page.CopyTo(input.AsSpan(AssociatedData.Size));
        page.CopyTo(body.Slice(PageRecord.NonceSize, PageRecord.PageSize));
        aes.Value!.Encrypt(nonce, ReadOnlySpan<byte>.Empty, Span<byte>.Empty, body[^PageRecord.TagSize..], input);
    }

    private Span<byte> NextNonce(Span<byte> body)
    {
        var n = Interlocked.Increment(ref counter);
        if (n == long.MaxValue)
        {
            throw new CryptographicException("nonce counter exhausted for this epoch");
        }
        var nonce = body[..PageRecord.NonceSize];
        BinaryPrimitives.WriteUInt32BigEndian(nonce, salt);
        BinaryPrimitives.WriteInt64BigEndian(nonce[4..], n);
        return nonce;
    }

    public PageRecord Seal(ulong pfn, ulong version, ReadOnlySpan<byte> page) =>
        Seal(pfn, version, page, new byte[PageRecord.SealedBodySize]);

    public void Dispose()
    {
        foreach (var a in aes.Values)
        {
            a.Dispose();
        }
        aes.Dispose();
        macInput.Dispose();
        CryptographicOperations.ZeroMemory(subkey);
    }
}
