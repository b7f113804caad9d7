using System.Buffers.Binary;
using SEmigrate.Contracts;

namespace SEmigrate.Sealing;

/// <summary>What a page's tag binds besides its bytes: a label that says how the page travels
/// ("SMPGAAD1" sealed, "SMPGMAC1" plain, so that one can never pass for the other), VM, page number,
/// version, epoch.</summary>
internal static class AssociatedData
{
    public const int Size = 8 + 16 + 8 + 8 + 4;

    public static void Write(Span<byte> ad, PageClass c, Guid vm, ulong pfn, ulong version, uint epoch)
    {
        (c == PageClass.Plain ? "SMPGMAC1"u8 : "SMPGAAD1"u8).CopyTo(ad);
        vm.TryWriteBytes(ad.Slice(8, 16));
        BinaryPrimitives.WriteUInt64LittleEndian(ad[24..], pfn);
        BinaryPrimitives.WriteUInt64LittleEndian(ad[32..], version);
        BinaryPrimitives.WriteUInt32LittleEndian(ad[40..], epoch);
    }
}
