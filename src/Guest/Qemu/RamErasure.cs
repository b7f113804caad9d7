using SEmigrate.Guest.Fuse;

namespace SEmigrate.Guest.Qemu;

/// <summary>The RAM file of a guest that has left this host for good holds its memory in the clear: its
/// written parts are overwritten with zeros (found with SEEK_DATA, so a sparse file of many GiB costs
/// only what the guest used), flushed, and the file deleted. Deleting alone would leave the blocks.</summary>
public static class RamErasure
{
    private const int SeekData = 3, SeekHole = 4;

    /// <summary>Erases the file at <paramref name="path"/> if it is there; returns the bytes overwritten.</summary>
    public static long Erase(string path)
    {
        if (!File.Exists(path))
        {
            return 0;
        }
        long erased = 0;
        using (var file = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.None))
        {
            var fd = (int)file.SafeFileHandle.DangerousGetHandle();
            var zeros = new byte[1 << 20];
            for (var at = Libc.Seek(fd, 0, SeekData); at >= 0 && at < file.Length; at = Libc.Seek(fd, at, SeekData))
            {
                var end = Libc.Seek(fd, at, SeekHole);
                for (file.Position = at; file.Position < end;)
                {
                    file.Write(zeros, 0, (int)Math.Min(zeros.Length, end - file.Position));
                }
                (erased, at) = (erased + end - at, end);
            }
            file.Flush(flushToDisk: true);
        }
        File.Delete(path);
        return erased;
    }
}
