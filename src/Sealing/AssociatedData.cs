using System.Buffers.Binary;

namespace SEmigrate.Sealing;

/// <summary>What a page's tag binds besides its bytes: "SMPGAAD1", VM, page number, version, epoch.</summary>
internal static class AssociatedData
{
    public const int Size = 8 + 16 + 8 + 8 + 4;

    public static void Write(Span<byte> ad, Guid vm, ulong pfn, ulong version, uint epoch)
    {
        "SMPGAAD1"u8.CopyTo(ad);
        vm.TryWriteBytes(ad.Slice(8, 16));
        BinaryPrimitives.WriteUInt64LittleEndian(ad[24..], pfn);
        BinaryPrimitives.WriteUInt64LittleEndian(ad[32..], version);
        BinaryPrimitives.WriteUInt32LittleEndian(ad[40..], epoch);
    }
}
