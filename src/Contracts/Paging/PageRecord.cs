namespace SEmigrate.Contracts.Paging;

/// <summary>One guest page as it travels and as a sub-host stores it. Body by class: Zero, none;
/// Plain, nonce (12) + the 4096 page bytes + GMAC tag (16); Sealed, nonce (12) + ciphertext (4096) +
/// GCM tag (16). Both bodies have the same size and layout, so every page that carries bytes is
/// authenticated. A sub-host treats the whole record as opaque.</summary>
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
        PageClass.Plain or PageClass.Sealed => SealedBodySize,
        _ => throw new ArgumentOutOfRangeException(nameof(c), c, "unknown page class"),
    };

    public int WireSize => HeaderSize + Body.Length;

    public static PageRecord Zero(ulong pfn, ulong version) => new(PageClass.Zero, pfn, version, 0, ReadOnlyMemory<byte>.Empty);
}
