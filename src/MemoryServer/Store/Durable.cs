using System.Runtime.InteropServices;

namespace SEmigrate.MemoryServer.Store;

/// <summary>Writes that survive a crash of the machine, not only of the process: a file's data is
/// flushed (fsync) and, when a file is created or renamed, so is its directory's entry, which .NET has
/// no call for.</summary>
public static partial class Durable
{
    /// <summary>Flushes the directory <paramref name="folder"/> (its entries: a file created or renamed in it).</summary>
    public static void SyncDirectory(string folder)
    {
        const int readOnly = 0, directory = 0x10000, closeOnExec = 0x80000;
        var fd = Open(folder, readOnly | directory | closeOnExec);
        if (fd < 0)
        {
            throw new IOException($"cannot open {folder} to flush it: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        try
        {
            if (Fsync(fd) != 0)
            {
                throw new IOException($"cannot flush {folder}: {Marshal.GetLastPInvokeErrorMessage()}");
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }

    /// <summary>Replaces <paramref name="path"/> with <paramref name="text"/> atomically and durably: a
    /// crash at any point leaves the old content or the new one, never a torn or lost one.</summary>
    public static void ReplaceFile(string path, string text)
    {
        var temporary = path + ".tmp";
        using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            file.Write(System.Text.Encoding.UTF8.GetBytes(text));
            file.Flush(flushToDisk: true);
        }
        File.Move(temporary, path, overwrite: true);
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}
