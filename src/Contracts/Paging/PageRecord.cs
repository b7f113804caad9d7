namespace SEmigrate.Contracts.Paging;

/// <summary>One guest page as it travels and as a sub-host stores it. Body by class: Zero, none;
/// Plain, the 4096 page bytes; Sealed, nonce (12) + ciphertext (4096) + GCM tag (16). A sub-host
/// treats the whole record as opaque.</summary>
public readonly record struct PageRecord(PageClass Class, ulong Pfn, ulong Version, uint KeyEpoch, ReadOnlyMemory<byte> Body)
{
    public const int PageSize = 4096;
    public const int NonceSize = 12;
    public const int TagSize = 16;
    public const int SealedBodySize = NonceSize + PageSize + TagSize;

    /// <summary>Bytes on the wire before the body: class, flags, reserved, epoch, pfn, version.</summary>
    public const int HeaderSize = 24;

    public static int BodySize(PageClass c) => c switch
    {
        PageClass.Zero => 0,
        PageClass.Plain => PageSize,
        PageClass.Sealed => SealedBodySize,
        _ => throw new ArgumentOutOfRangeException(nameof(c), c, "unknown page class"),
    };

    public int WireSize => HeaderSize + Body.Length;

    public static PageRecord Zero(ulong pfn, ulong version) => new(PageClass.Zero, pfn, version, 0, ReadOnlyMemory<byte>.Empty);
}
