using SEmigrate.Contracts.Paging;

namespace SEmigrate.MemoryServer.Store;

/// <summary>A record's wire form, as stores keep it.</summary>
internal static class StoredRecord
{
    public static byte[] Encode(PageRecord record)
    {
        var bytes = new byte[record.WireSize];
        PageFrame.WritePage(bytes, record);
        return bytes;
    }
}
